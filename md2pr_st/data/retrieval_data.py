"""Retrieval data: a corpus, queries and graded qrels, with checks and a content fingerprint.

:class:`RetrievalData` is what every stage takes: the loaders (:func:`~md2pr_st.data.load_rag24`,
:func:`~md2pr_st.data.load_beir`) return it, mining draws training pairs from it
(:func:`~md2pr_st.data.training_pairs`), evaluation scores runs against its qrels.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Iterable, Iterator
from functools import cached_property

from datasets import Dataset

from md2pr_st.utils import fingerprint


def corpus_fingerprint(corpus: Dataset, chunk_size: int = 8192) -> str:
    """sha256 of a corpus ``Dataset``'s ids and texts, in order, read chunk by chunk (bounded memory).

    The one fingerprint of a corpus: indexes, embedding caches and pipeline stages are keyed by it.

    Example:
        >>> a = Dataset.from_dict({"id": ["a", "b"], "text": ["x", "y"]})
        >>> b = Dataset.from_dict({"id": ["a", "b"], "text": ["x", "z"]})
        >>> corpus_fingerprint(a) == corpus_fingerprint(a.select([0, 1])), corpus_fingerprint(a) == corpus_fingerprint(b)
        (True, False)
    """

    def parts() -> Iterator[str]:
        for column in ("id", "text"):
            yield column + "s"
            for start in range(0, len(corpus), chunk_size):
                yield from corpus[start : start + chunk_size][column]

    return fingerprint(parts())


def dataset_fingerprint(dataset: Dataset, batch_size: int = 1000) -> str:
    """sha256 of a ``Dataset``'s column names and rows, in order, read batch by batch: a training set's identity,
    whatever transforms or files it came from (``Dataset._fingerprint`` follows the transforms, not the rows).

    Example:
        >>> a = Dataset.from_dict({"query": ["q1", "q2"], "positive": ["p1", "p2"]})
        >>> dataset_fingerprint(a) == dataset_fingerprint(a.select([0, 1])), dataset_fingerprint(a) == dataset_fingerprint(a.select([1, 0]))
        (True, False)
    """

    def parts() -> Iterator[str]:
        yield json.dumps(dataset.column_names)
        for start in range(0, len(dataset), batch_size):
            yield json.dumps(dataset[start : start + batch_size], sort_keys=True, default=str)

    return fingerprint(parts())


@dataclasses.dataclass(eq=False)
class RetrievalData:
    """A retrieval test collection: corpus, queries and graded qrels.

    Args:
        corpus: :class:`datasets.Dataset` with columns ``id`` and ``text``.
        queries: :class:`datasets.Dataset` with columns ``id`` and ``text``.
        qrels: ``{query_id: {doc_id: grade}}`` with integer grades (0 = not relevant).
        name: a short name used in reports (``rag24-test``, a folder name, ...).

    Example:
        >>> from datasets import Dataset
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["d1", "d2"], "text": ["Paris is in France.", "Tea is a drink."]}),
        ...     queries=Dataset.from_dict({"id": ["q1"], "text": ["capital of france"]}),
        ...     qrels={"q1": {"d1": 3, "d2": 0}},
        ... )
        >>> data.relevant("q1", min_grade=2)
        ['d1']
    """

    corpus: Dataset
    queries: Dataset
    qrels: dict[str, dict[str, int]]
    name: str = "data"

    def __post_init__(self) -> None:
        validate_retrieval_data(self.corpus, self.queries, self.qrels, self.name)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the contents (corpus ids and texts, query ids and texts, every judgement): what a stage made
        from this data is reused only while it is unchanged, wherever the data was loaded from."""
        qrels = json.dumps(self.qrels, sort_keys=True)
        return fingerprint(
            [corpus_fingerprint(self.corpus), *self.queries["id"], "texts", *self.queries["text"], "qrels", qrels]
        )

    def relevant(self, query_id: str, min_grade: int = 2) -> list[str]:
        """Ids of the documents judged at ``grade >= min_grade`` for ``query_id``."""
        return [doc_id for doc_id, grade in self.qrels.get(query_id, {}).items() if grade >= min_grade]

    def subset(self, query_ids: Iterable[str], name: str | None = None) -> RetrievalData:
        """The same corpus with only ``query_ids`` (and their qrels)."""
        keep = set(query_ids)
        unknown = keep - set(self.queries["id"])
        if unknown:
            raise KeyError(f"{len(unknown)} query ids are not in {self.name!r}, e.g. {sorted(unknown)[:3]}")
        queries = self.queries.select([i for i, qid in enumerate(self.queries["id"]) if qid in keep])
        qrels = {qid: dict(docs) for qid, docs in self.qrels.items() if qid in keep}
        return RetrievalData(self.corpus, queries, qrels, name or self.name)

    def __repr__(self) -> str:
        n_judged = sum(len(docs) for docs in self.qrels.values())
        return (
            f"RetrievalData(name={self.name!r}, corpus={len(self.corpus):,} docs, "
            f"queries={len(self.queries):,}, qrels={n_judged:,} judgements)"
        )


# trec_eval keeps grades in a C int; TREC grades are small (-2..4), so anything beyond is a typo.
MIN_GRADE, MAX_GRADE = -(2**31), 2**31 - 1


def _is_grade(grade: object) -> bool:
    return isinstance(grade, numbers.Integral) and not isinstance(grade, bool) and MIN_GRADE <= grade <= MAX_GRADE


def validate_retrieval_data(corpus: Dataset, queries: Dataset, qrels: dict, name: str = "data") -> None:
    """Raise a :class:`ValueError` that says what is wrong with a corpus / queries / qrels triple."""
    for label, table in (("corpus", corpus), ("queries", queries)):
        missing = {"id", "text"} - set(table.column_names)
        if missing:
            raise ValueError(
                f"{name}: the {label} needs columns 'id' and 'text'; it lacks {sorted(missing)} "
                f"(it has {table.column_names}). Rename your columns, e.g. dataset.rename_column('_id', 'id')."
            )
        if len(table) == 0:
            raise ValueError(f"{name}: the {label} is empty; retrieval needs at least one {label[:-1]}.")
        ids = table["id"]
        if len(set(ids)) != len(ids):
            seen, dups = set(), []
            for i in ids:
                if i in seen:
                    dups.append(i)
                seen.add(i)
            raise ValueError(
                f"{name}: {len(dups)} duplicate ids in the {label}, e.g. {dups[:3]}. Ids must be unique; "
                "merge or rename the duplicates."
            )
        bad = [i for i, text in zip(ids, table["text"]) if not isinstance(text, str) or not text.strip()]
        if bad:
            raise ValueError(
                f"{name}: {len(bad)} {label} entries have an empty or missing text, e.g. ids {bad[:3]}. "
                "Drop them or fill in their text."
            )
    query_ids = set(queries["id"])
    without = sorted(query_ids - set(qrels))
    if without:
        raise ValueError(
            f"{name}: {len(without)} queries have no qrels, e.g. {without[:3]}. Every query needs at least one "
            "judged document; drop the queries without judgements (data.subset(...)) or add their qrels."
        )
    extra = sorted(set(qrels) - query_ids)
    if extra:
        raise ValueError(
            f"{name}: the qrels name {len(extra)} queries that are not in the queries, e.g. {extra[:3]}. "
            "Pass the matching queries file or drop those qrels."
        )
    bad = [(q, d, g) for q, docs in qrels.items() for d, g in docs.items() if not _is_grade(g)]
    if bad:
        q, d, g = bad[0]
        raise ValueError(
            f"{name}: {len(bad)} qrels grades are not integers in {MIN_GRADE}..{MAX_GRADE}, e.g. query {q!r}, "
            f"document {d!r}: {g!r}. Grades are small integers (0 = not relevant); fix those judgements."
        )
    doc_ids = set(corpus["id"])
    unknown_docs = sorted({d for docs in qrels.values() for d in docs} - doc_ids)
    if unknown_docs:
        raise ValueError(
            f"{name}: the qrels judge {len(unknown_docs)} documents that are not in the corpus, e.g. "
            f"{unknown_docs[:3]}. Restrict the qrels to the corpus or add those documents."
        )
