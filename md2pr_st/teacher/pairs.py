"""The ``(query, passage, label)`` pairs the cross-encoder teacher is trained on.

Every judged pair of the train split with the soft label ``grade / max_grade`` (grades 0..3 -> 0, 1/3, 2/3, 1);
``random_negatives`` corpus passages per query outside its judgements with label 0 (mined negatives come from the
whole corpus, so the teacher must also have seen easy ones); and, with :func:`mine_teacher_negatives`, the
student's best-ranked passages of the whole corpus that the query's judgements do not cover, with label 0. In a
collection whose corpus is the union of many topics' pools (RAG24), those are mostly passages judged for *other*
topics: a teacher that never saw them ranks them among a query's own passages, and a passage nobody judged for
the query counts as non-relevant.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import Dataset
from sentence_transformers import SentenceTransformer

from md2pr_st.data import RetrievalData
from md2pr_st.index import FaissIndex, retrieve
from md2pr_st.models import resolve_model_name
from md2pr_st.validation import check_range

__all__ = ["mine_teacher_negatives", "teacher_training_pairs"]


def mine_teacher_negatives(
    data: RetrievalData,
    student: str | Path | SentenceTransformer | None = None,
    num_negatives: int = 8,
    range_max: int = 50,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> dict[str, list[str]]:
    """Per query, the ids of the ``num_negatives`` passages the student ranks highest in the whole corpus among
    those the query's qrels do not judge (at any grade), taken from the student's top ``range_max`` unjudged
    passages (exact search). Judged passages are left out here: :func:`teacher_training_pairs` already trains
    on them with their grade.

    Example:
        >>> from md2pr_st.models import resolve_model_name
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["a", "b", "c", "d"], "text": [
        ...         "Paris is the capital of France.", "Lyon is a city in France.", "Tea is a drink.",
        ...         "France borders Spain."]}),
        ...     queries=Dataset.from_dict({"id": ["q"], "text": ["capital of france"]}),
        ...     qrels={"q": {"a": 3}},
        ... )
        >>> negatives = mine_teacher_negatives(data, resolve_model_name(None), num_negatives=2)
        >>> negatives["q"][0] in ("b", "d"), "a" in negatives["q"], len(negatives["q"])
        (True, False, 2)
    """
    if num_negatives < 1 or range_max < num_negatives:
        raise ValueError(
            f"mined negatives need 1 <= num_negatives <= range_max, got num_negatives={num_negatives}, "
            f"range_max={range_max}."
        )
    if not isinstance(student, SentenceTransformer):
        student = SentenceTransformer(resolve_model_name(student), device="cpu")
    index = FaissIndex.from_model(student, data.corpus, factory="Flat", batch_size=batch_size,
                                  show_progress_bar=show_progress_bar)  # fmt: skip
    query_ids = list(data.queries["id"])
    most_judged = max((len(data.qrels.get(q, {})) for q in query_ids), default=0)
    k = min(range_max + most_judged, len(data.corpus))
    _, found = retrieve(student, list(data.queries["text"]), index, k, batch_size, show_progress_bar)
    negatives = {}
    for query_id, doc_ids in zip(query_ids, found):
        judged = data.qrels.get(query_id, {})
        negatives[query_id] = [d for d in doc_ids if d not in judged][:range_max][:num_negatives]
    return negatives


def teacher_training_pairs(
    data: RetrievalData,
    random_negatives: int = 2,
    max_grade: int | None = None,
    seed: int = 0,
    hard_negatives: Mapping[str, Sequence[str]] | None = None,
) -> Dataset:
    """The ``(query, passage, label)`` pairs the teacher is trained on.

    ``label = grade / max_grade`` for each judged pair (``max_grade`` defaults to the largest grade in the
    qrels); ``label = 0`` for each of the query's ``hard_negatives`` (corpus ids, e.g. from
    :func:`mine_teacher_negatives`) that its qrels do not judge, and for ``random_negatives`` further corpus
    passages per query that its qrels do not judge (drawn with ``seed``).

    Example:
        >>> from datasets import Dataset
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris is in France.", "Tea.", "Cats."]}),
        ...     queries=Dataset.from_dict({"id": ["q"], "text": ["where is paris"]}),
        ...     qrels={"q": {"a": 3, "b": 0}},
        ... )
        >>> pairs = teacher_training_pairs(data, random_negatives=1)
        >>> list(pairs["passage"]), list(pairs["label"])
        (['Paris is in France.', 'Tea.', 'Cats.'], [1.0, 0.0, 0.0])
        >>> list(teacher_training_pairs(data, random_negatives=0, hard_negatives={"q": ["c", "a"]})["passage"])
        ['Paris is in France.', 'Tea.', 'Cats.']
    """
    check_range("random_negatives", random_negatives)
    grades = [g for docs in data.qrels.values() for g in docs.values()]
    max_grade = max_grade if max_grade is not None else max(grades, default=0)
    if max_grade <= 0:
        raise ValueError(
            f"{data.name}: no judgement has a positive grade (max_grade={max_grade}), so the teacher would only "
            "see negatives. Train on qrels with relevant documents."
        )
    row_of = {doc_id: i for i, doc_id in enumerate(data.corpus["id"])}
    hard_negatives = hard_negatives or {}
    unknown = sorted({d for docs in hard_negatives.values() for d in docs} - set(row_of))[:3]
    if unknown:
        raise ValueError(f"hard_negatives name passages that are not in the corpus: {unknown}.")
    rng = random.Random(seed)
    queries = dict(zip(data.queries["id"], data.queries["text"]))
    rows: list[tuple[str, int, float]] = []
    for query_id, query in queries.items():
        judged = data.qrels.get(query_id, {})
        for doc_id, grade in judged.items():
            rows.append((query, row_of[doc_id], min(max(grade, 0), max_grade) / max_grade))
        mined = [row_of[d] for d in dict.fromkeys(hard_negatives.get(query_id, ())) if d not in judged]
        rows += [(query, row, 0.0) for row in mined]
        drawn: set[int] = set()
        tries, wanted = 0, min(random_negatives, len(data.corpus) - len(judged) - len(mined))  # no more than exist
        while len(drawn) < wanted and tries < 100 * (wanted + 1):
            tries += 1
            row = rng.randrange(len(data.corpus))
            if data.corpus[row]["id"] not in judged and row not in mined:
                drawn.add(row)
        rows += [(query, row, 0.0) for row in sorted(drawn)]
    texts = data.corpus.select([r for _, r, _ in rows])["text"]
    return Dataset.from_dict(
        {"query": [q for q, _, _ in rows], "passage": texts, "label": [float(y) for _, _, y in rows]}
    )


def training_pairs_of(
    train: RetrievalData | Dataset,
    random_negatives: int,
    max_pairs: int | None,
    seed: int,
    hard_negatives: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Dataset, str]:
    """The ``(query, passage, label)`` rows :func:`~md2pr_st.teacher.train_teacher` trains on, and the name of where
    they come from: built by :func:`teacher_training_pairs` from a split, or a ready dataset checked."""
    if isinstance(train, RetrievalData):
        pairs = teacher_training_pairs(train, random_negatives=random_negatives, seed=seed,
                                       hard_negatives=hard_negatives)  # fmt: skip
        name = train.name
    elif isinstance(train, Dataset):
        missing = {"query", "passage", "label"} - set(train.column_names)
        if missing:
            raise ValueError(
                f"The teacher's training dataset needs columns query, passage, label; it lacks {sorted(missing)} "
                f"(it has {train.column_names}). Build it with teacher_training_pairs(data)."
            )
        pairs, name = train.select_columns(["query", "passage", "label"]), "dataset"
    else:
        raise TypeError(f"train must be a RetrievalData or a datasets.Dataset, got {type(train).__name__}.")
    if len(pairs) == 0:
        raise ValueError("No training pairs: the train split has no judged pairs.")
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = pairs.shuffle(seed=seed).select(range(max_pairs))
    return pairs, name
