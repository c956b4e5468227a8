"""Training pairs from graded judgements: the (query, positive) rows that mining turns into n-tuples."""

from __future__ import annotations

from typing import Any, Literal

from datasets import Dataset

from md2pr_st.data.retrieval_data import RetrievalData


def training_pairs(
    data: RetrievalData,
    min_grade: int = 2,
    positives: Literal["all", "best"] | int | str = "all",
    skip_queries_without_positive: bool = False,
) -> Dataset:
    """(query, positive) rows from graded qrels: the input of :func:`mine_hard_negatives`.

    Each query gets one row per passage judged ``grade >= min_grade`` (``positives="all"``), one row with its
    highest-graded passage (``"best"``), or rows for its ``k`` highest-graded passages (``positives=k``); ties are
    broken by document id. Columns: ``query_id``, ``query``, ``positive_id``, ``positive`` and ``exclude_ids``
    (every passage of the query judged ``grade >= min_grade``, trained on or not), so that mining never picks a
    known positive as a negative when only some positives get rows.

    Raises:
        ValueError: a query has no passage at ``grade >= min_grade`` (unless
            ``skip_queries_without_positive=True``, which drops it).

    Example:
        >>> from md2pr_st.data import RetrievalData
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris.", "France.", "Tea."]}),
        ...     queries=Dataset.from_dict({"id": ["q"], "text": ["capital of france"]}),
        ...     qrels={"q": {"a": 3, "b": 2, "c": 0}},
        ... )
        >>> list(training_pairs(data)["positive_id"]), list(training_pairs(data, positives="best")["positive_id"])
        (['a', 'b'], ['a'])
    """
    per_query = positives_per_query(positives)
    row_of = {doc_id: i for i, doc_id in enumerate(data.corpus["id"])}
    rows: list[tuple[str, str, str]] = []
    exclude: dict[str, list[str]] = {}
    without = []
    for query_id, query in zip(data.queries["id"], data.queries["text"]):
        judged = sorted(
            ((d, g) for d, g in data.qrels.get(query_id, {}).items() if g >= min_grade), key=lambda x: (-x[1], x[0])
        )
        if not judged:
            without.append(query_id)
            continue
        exclude[query_id] = sorted(d for d, _ in judged)
        for doc_id, _ in judged[:per_query]:
            rows.append((query_id, query, doc_id))
    if without and not skip_queries_without_positive:
        raise ValueError(
            f"{data.name}: {len(without)} queries have no passage judged at grade >= {min_grade}, e.g. "
            f"{without[:3]}, so they have no positive to train on. Pass skip_queries_without_positive=True to drop "
            "them, or lower min_grade."
        )
    texts = data.corpus.select([row_of[d] for _, _, d in rows])["text"] if rows else []
    return Dataset.from_dict(
        {
            "query_id": [q for q, _, _ in rows],
            "query": [t for _, t, _ in rows],
            "positive_id": [d for _, _, d in rows],
            "positive": list(texts),
            "exclude_ids": [exclude[q] for q, _, _ in rows],
        }
    )


def positives_per_query(positives: Any) -> int | None:
    """``"all"`` -> None (no cap), ``"best"`` -> 1, ``k`` or ``"k"`` -> k."""
    if positives == "all":
        return None
    if positives == "best":
        return 1
    try:
        k = int(positives)
    except (TypeError, ValueError):
        k = 0
    if k < 1 or isinstance(positives, float):
        raise ValueError(f"positives must be 'all', 'best' or a positive integer k, got {positives!r}.")
    return k
