"""Training rows: (query, positive) pairs from graded judgements, which mining turns into n-tuples, and the checks
of the n-tuple rows a trainer reads (``query``, ``positive``, ``negative_1..n``, a label column)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, load_from_disk

from md2pr_st.config import positives_per_query
from md2pr_st.data.retrieval_data import RetrievalData
from md2pr_st.validation import check_grade, check_range

logger = logging.getLogger(__name__)


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
    check_range("min_grade", min_grade)
    check_grade("min_grade", min_grade, (g for docs in data.qrels.values() for g in docs.values()), data.name)
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


def negative_columns(column_names: Sequence[str]) -> list[str]:
    """The ``negative_<i>`` columns of a dataset, ordered by i (``negative`` alone counts as ``negative_1``).

    Example:
        >>> negative_columns(["query", "positive", "negative_10", "negative_2", "negative_1", "scores"])
        ['negative_1', 'negative_2', 'negative_10']
    """
    found = []
    for name in column_names:
        if name == "negative":
            found.append((1, name))
        elif name.startswith("negative_") and name[len("negative_") :].isdigit():
            found.append((int(name[len("negative_") :]), name))
    return [name for _, name in sorted(found)]


def load_rows(folder: str | Path, option: str = "--input", hint: str = "") -> Dataset:
    """A ``datasets`` folder (``save_to_disk``), with an error naming ``option`` when it is not one or when its data
    files are truncated or corrupt; a saved dataset of 0 rows, which ``datasets`` itself fails to load, comes back
    empty.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "rows"
        >>> Dataset.from_dict({"query": [], "positive": []}).save_to_disk(str(folder))
        >>> len(load_rows(folder)), load_rows(folder).column_names
        (0, ['query', 'positive'])
    """
    folder = Path(folder)
    if not (folder / "state.json").is_file() or not (folder / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{option} {folder} is not a `datasets` folder (save_to_disk). {hint}".strip())
    try:
        try:
            return load_from_disk(str(folder))
        except IndexError:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            files = [folder / f["filename"] for f in state.get("_data_files", [])]
            if sum(pa.ipc.open_stream(pa.memory_map(str(f))).read_all().num_rows for f in files):
                raise
            info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
            features = Features.from_dict(info["features"])
            return Dataset.from_dict({name: [] for name in features}, features=features)
    except (pa.ArrowException, ValueError, KeyError, OSError) as exc:
        files = ", ".join(sorted(p.name for p in folder.glob("*.arrow"))) or "no *.arrow file"
        raise ValueError(
            f"{option} {folder}: its data ({files}) is truncated or corrupt ({' '.join(str(exc).split())[:160]}). "
            "Write the folder again with the command that made it; a copy that was interrupted, or a full disk when "
            "it was saved, leaves such a file."
        ) from exc


# Label columns of the host library: one of them reaches the loss, after the text columns.
LABEL_COLUMNS = ("label", "labels", "score", "scores")


def check_training_rows(
    dataset: Dataset, query_column: str = "query", positive_column: str = "positive", source: str = "dataset"
) -> Dataset:
    """``dataset`` ready for the trainer, whose losses read the text columns by position: refused when empty;
    ``query``, ``positive``, ``negative_1..n``, other columns, then the label column, reordered if they were not in
    that order; a warning when the positive column is on average much shorter than the query column (swapped
    columns: the student would learn to retrieve queries from passages).

    Example:
        >>> rows = Dataset.from_dict({"positive": ["Paris is the capital of France."], "query": ["capital of france"]})
        >>> check_training_rows(rows).column_names
        ['query', 'positive']
    """
    if len(dataset) == 0:
        raise ValueError(f"The training {source} has 0 rows: nothing to train on.")
    names = dataset.column_names
    if query_column not in names or positive_column not in names:
        return dataset
    negatives = negative_columns(names)
    labels = [c for c in names if c in LABEL_COLUMNS]
    others = [c for c in names if c not in {query_column, positive_column, *negatives, *labels}]
    _check_text_columns(dataset, others, source)
    _check_labels(dataset, labels, source)
    order = [query_column, positive_column, *negatives, *others, *labels]
    if names != order:
        logger.info("Reordering the training columns %s to %s (the loss reads them by position).", names, order)
        dataset = dataset.select_columns(order)
    warn_if_swapped(dataset, query_column, positive_column, f"training {source}")
    return dataset


def _check_text_columns(dataset: Dataset, columns: list[str], source: str) -> None:
    """The trainer reads every column but the label as a text: a column of numbers under another name (a renamed
    ``scores`` column) would reach the tokenizer."""
    for column in columns:
        feature = dataset.features[column]
        if getattr(feature, "dtype", None) == "string":
            continue
        label = " (the teacher's scores?)" if "score" in column.lower() or "label" in column.lower() else ""
        raise ValueError(
            f"The training {source}'s column {column!r}{label} holds {_feature_name(feature)}, not texts: the trainer "
            f"reads every column but the label ({', '.join(LABEL_COLUMNS)}) as a text. Name the scores column "
            "'scores', or remove the column."
        )


def _feature_name(feature: object) -> str:
    dtype = getattr(feature, "dtype", None) or getattr(getattr(feature, "feature", None), "dtype", None)
    return f"lists of {dtype}" if not hasattr(feature, "dtype") else f"{dtype} values"


def _check_labels(dataset: Dataset, labels: list[str], source: str) -> None:
    """A label column (the teacher's scores) of numbers that are all finite: a NaN or infinite score would make the
    loss NaN from the first step."""
    for column in labels:
        values = dataset.with_format("arrow")[column]
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        while (
            pa.types.is_list(values.type)
            or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)
        ):
            values = pc.list_flatten(values)
        if not pa.types.is_floating(values.type):
            continue
        bad = len(values) - (pc.sum(pc.is_finite(values)).as_py() or 0)
        if bad:
            raise ValueError(
                f"The training {source}'s column {column!r} holds {bad} values that are NaN, infinite or missing: the "
                "loss would not be a number. Score the rows again (md2pr filter)."
            )


def warn_if_swapped(dataset: Dataset, query_column: str, positive_column: str, source: str = "dataset") -> bool:
    """Log a warning, and return True, when the positive passages are on average less than half as long as the
    queries (in characters, over the first 1,000 rows): the two columns are probably swapped."""
    sample = dataset.select_columns([query_column, positive_column])[:1000]
    query_len = _mean_length(sample[query_column])
    positive_len = _mean_length(sample[positive_column])
    if not positive_len < 0.5 * query_len:  # NaN (no text to measure) is no evidence either
        return False
    logger.warning(
        "The %r column is on average much shorter than the %r column (%.0f vs %.0f characters) in the %s: are the "
        "columns swapped? %r is read as the query and %r as the passage.",
        positive_column,
        query_column,
        positive_len,
        query_len,
        source,
        query_column,
        positive_column,
    )
    return True


def _mean_length(texts: list) -> float:
    """Mean length of the strings (a list-valued cell counts as its strings)."""
    lengths = [len(t) for cell in texts for t in (cell if isinstance(cell, list) else [cell]) if isinstance(t, str)]
    return sum(lengths) / len(lengths) if lengths else float("nan")
