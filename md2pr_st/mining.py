"""Hard-negative mining with the current student and FAISS (step 2 of each MD2PR round).

For each training query q with known positives P_q, the student encodes q (as a query) and the corpus (as
documents), the project's :class:`~md2pr_st.index.FaissIndex` retrieves the top ``range_max + |P_q|`` passages by
inner product (cosine for normalised models), every known positive is removed (by corpus id and by exact text,
so duplicates of a positive under another id go too), and ``num_negatives`` negatives are taken from ranks
``range_min .. range_max - 1`` of the remaining list, either the best ones (``sampling="top"``) or a uniform
sample without replacement kept in rank order (``sampling="random"``). Ranks are 0-based and counted after the
positives are removed, as in ``sentence_transformers.util.mine_hard_negatives``.

The output is the host library's n-tuple layout: one row per (query, positive) with columns ``query``,
``positive``, ``negative_1`` .. ``negative_n``; a query with several positives gives several rows that share
its negatives. Mine more candidates than you want to train on when a
:class:`~md2pr_st.false_negatives.FalseNegativeFilter` follows: it drops false negatives and refills each row
from the remaining candidates.

Corpus embeddings are the expensive part. :class:`CorpusEmbeddingCache` computes them once per round (per model
state) in chunks of ``chunk_size`` passages, each chunk written atomically to disk under a key made of the
model's fingerprint (weights and settings), the corpus fingerprint (ids and texts) and the chunk size. An
interrupted run finds the finished chunks and encodes only the rest; a new student (the next round) gets a new
key. Only one chunk of passage texts is held in memory at a time, and the index is filled chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from md2pr_st.index import FaissIndex, encode, model_fingerprint
from md2pr_st.utils import atomic_path, fingerprint, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from md2pr_st.data import RetrievalData

logger = logging.getLogger(__name__)

__all__ = [
    "CorpusEmbeddingCache",
    "MiningStats",
    "mine_hard_negatives",
    "training_pairs",
    "negative_columns",
]

# Bump when the on-disk layout of the embedding cache changes, so that old caches are not misread.
_CACHE_FORMAT = 1
_MANIFEST = "manifest.json"


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


def _corpus_chunks(corpus: Dataset, chunk_size: int, column: str) -> Iterator[tuple[int, list[Any]]]:
    for start in range(0, len(corpus), chunk_size):
        yield start, corpus[start : start + chunk_size][column]


def _check_corpus(corpus: Dataset) -> None:
    if not isinstance(corpus, Dataset):
        raise TypeError(f"The corpus must be a datasets.Dataset with columns 'id' and 'text', got {type(corpus)}.")
    missing = {"id", "text"} - set(corpus.column_names)
    if missing:
        raise ValueError(
            f"The corpus needs columns 'id' and 'text'; it lacks {sorted(missing)} (it has {corpus.column_names}). "
            "Rename them, e.g. corpus.rename_column('_id', 'id')."
        )
    if len(corpus) == 0:
        raise ValueError("The corpus is empty: mining needs passages to retrieve negatives from.")


def streaming_corpus_fingerprint(corpus: Dataset, chunk_size: int = 8192) -> str:
    """:func:`md2pr_st.index.corpus_fingerprint` of a corpus ``Dataset``, read chunk by chunk (same value).

    Example:
        >>> from md2pr_st.index import corpus_fingerprint
        >>> corpus = Dataset.from_dict({"id": ["a", "b", "c"], "text": ["x", "y", "z"]})
        >>> streaming_corpus_fingerprint(corpus, chunk_size=2) == corpus_fingerprint(["a", "b", "c"], ["x", "y", "z"])
        True
    """

    def parts() -> Iterator[str]:
        yield "ids"
        for _, ids in _corpus_chunks(corpus, chunk_size, "id"):
            yield from ids
        yield "texts"
        for _, texts in _corpus_chunks(corpus, chunk_size, "text"):
            yield from texts

    return fingerprint(parts())


class CorpusEmbeddingCache:
    """Document embeddings of a corpus for one model, computed in chunks and cached on disk, resumable.

    The cache folder is ``folder / key[:16]`` with ``key = sha256(format, model_fingerprint, corpus_fingerprint,
    chunk_size)``; it holds ``manifest.json`` and ``chunk_00000.npy``, ``chunk_00001.npy``, ... (float32, one row
    per passage, in corpus order). Each chunk is written atomically, so a crash leaves finished chunks intact and
    the next :meth:`compute` encodes only the missing ones. A chunk that cannot be read or has the wrong shape is
    recomputed. Without a ``folder`` nothing is written and :meth:`iter_chunks` encodes on the fly.

    Args:
        model: the student (a ``SentenceTransformer``); passages are encoded with ``encode_document``.
        corpus: a ``Dataset`` with columns ``id`` and ``text``.
        folder: the cache root (``None``: no disk cache).
        chunk_size: passages per chunk (and per file); bounds the texts held in memory.
        batch_size: encoding batch size.
        show_progress_bar: a bar over chunks.

    Example:
        >>> import tempfile
        >>> from sentence_transformers import SentenceTransformer
        >>> from md2pr_st.models import resolve_model_name
        >>> model = SentenceTransformer(resolve_model_name(None), device="cpu")
        >>> corpus = Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris.", "Tea is a drink.", "Cats."]})
        >>> cache = CorpusEmbeddingCache(model, corpus, tempfile.mkdtemp(), chunk_size=2)
        >>> cache.compute().shape, cache.num_chunks, cache.finished_chunks()
        ((3, 384), 2, [0, 1])
    """

    def __init__(
        self,
        model: SentenceTransformer,
        corpus: Dataset,
        folder: str | Path | None = None,
        *,
        chunk_size: int = 4096,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        corpus_fingerprint: str | None = None,
    ) -> None:
        _check_corpus(corpus)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of passages, got {chunk_size}.")
        self.model = model
        self.corpus = corpus
        self.chunk_size = int(chunk_size)
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.model_fingerprint = model_fingerprint(model)
        self.corpus_fingerprint = corpus_fingerprint or streaming_corpus_fingerprint(corpus)
        self.key = fingerprint(
            ["md2pr-corpus-embeddings", str(_CACHE_FORMAT), self.model_fingerprint, self.corpus_fingerprint]
            + [str(self.chunk_size)]
        )
        self.path = Path(folder) / self.key[:16] if folder is not None else None
        self.dim: int | None = None
        self.encoded_chunks = 0  # chunks encoded (not read from disk) by this object

    @property
    def num_chunks(self) -> int:
        return (len(self.corpus) + self.chunk_size - 1) // self.chunk_size

    def _rows(self, chunk: int) -> int:
        return min(self.chunk_size, len(self.corpus) - chunk * self.chunk_size)

    def _chunk_path(self, chunk: int) -> Path:
        assert self.path is not None
        return self.path / f"chunk_{chunk:05d}.npy"

    def _write_manifest(self) -> None:
        assert self.path is not None
        manifest = self.path / _MANIFEST
        if not manifest.is_file():
            write_json(
                manifest,
                {
                    "format": _CACHE_FORMAT,
                    "model_fingerprint": self.model_fingerprint,
                    "corpus_fingerprint": self.corpus_fingerprint,
                    "size": len(self.corpus),
                    "chunk_size": self.chunk_size,
                    "num_chunks": self.num_chunks,
                },
            )

    def _load_chunk(self, chunk: int) -> np.ndarray | None:
        path = self._chunk_path(chunk)
        if not path.is_file():
            return None
        try:
            array = np.load(path, mmap_mode="r")
        except Exception as exc:  # a damaged file is recomputed, never trusted
            logger.warning("Embedding chunk %s is unreadable (%s); recomputing it.", path, exc)
            return None
        if array.ndim != 2 or array.shape[0] != self._rows(chunk) or array.dtype != np.float32:
            logger.warning(
                "Embedding chunk %s has shape %s, expected %d rows; recomputing.", path, array.shape, self._rows(chunk)
            )
            return None
        return array

    def finished_chunks(self) -> list[int]:
        """Indices of the chunks already on disk (and readable)."""
        if self.path is None:
            return []
        return [i for i in range(self.num_chunks) if self._load_chunk(i) is not None]

    def _encode_chunk(self, chunk: int) -> np.ndarray:
        start = chunk * self.chunk_size
        texts = self.corpus[start : start + self.chunk_size]["text"]
        embeddings = encode(self.model, texts, "document", self.batch_size, show_progress_bar=False)
        self.encoded_chunks += 1
        return embeddings

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, embeddings)`` per chunk in corpus order, encoding (and saving) missing chunks."""
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_manifest()
        bar = tqdm(
            range(self.num_chunks),
            desc="Encoding corpus (chunks)",
            disable=self.show_progress_bar is False or (self.show_progress_bar is None and self.num_chunks < 2),
        )
        for chunk in bar:
            array = self._load_chunk(chunk) if self.path is not None else None
            if array is None:
                array = self._encode_chunk(chunk)
                if self.path is not None:
                    with atomic_path(self._chunk_path(chunk)) as tmp:
                        with open(tmp, "wb") as handle:
                            np.save(handle, array)
            self.dim = int(array.shape[1])
            yield chunk * self.chunk_size, array

    def compute(self) -> np.ndarray:
        """All embeddings as one ``(len(corpus), dim)`` float32 array (computing missing chunks first)."""
        return np.concatenate([np.asarray(array) for _, array in self.iter_chunks()], axis=0)

    def build_index(
        self, factory: str = "Flat", train_size: int = 100_000, seed: int = 0, **search_params: Any
    ) -> FaissIndex:
        """A :class:`~md2pr_st.index.FaissIndex` over the corpus, filled chunk by chunk.

        Indexes that need training (IVF, PQ, ...) are trained on the first ``train_size`` rows' worth of chunks
        (sampled with ``seed`` when more are read).
        """
        index: faiss.Index | None = None
        pending: list[np.ndarray] = []
        for _, array in self.iter_chunks():
            array = np.ascontiguousarray(array, dtype=np.float32)
            if not np.isfinite(array).all():
                raise ValueError("Some corpus embeddings are NaN or infinite; check the model and the passages.")
            if index is None:
                index = faiss.index_factory(array.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:
                pending.append(array)
                if sum(len(a) for a in pending) < train_size:
                    continue
                sample = np.concatenate(pending)
                if len(sample) > train_size:
                    rows = np.random.default_rng(seed).choice(len(sample), train_size, replace=False)
                    sample = sample[np.sort(rows)]
                index.train(sample)
                for part in pending:
                    index.add(part)
                pending = []
                continue
            index.add(array)
        if pending:  # a small corpus: train on all of it
            sample = np.concatenate(pending)
            index.train(sample)
            index.add(sample)
        assert index is not None
        out = FaissIndex(index, self.corpus["id"], self.model_fingerprint, self.corpus_fingerprint, factory)
        out.set_search_params(**search_params)
        return out


@dataclasses.dataclass
class MiningStats:
    """What one mining run did (``mine_hard_negatives(..., return_stats=True)``)."""

    queries: int = 0
    rows_in: int = 0
    rows_out: int = 0
    dropped_queries: int = 0
    dropped_rows: int = 0
    positives_excluded: int = 0
    negatives: int = 0
    corpus_size: int = 0
    chunks_encoded: int = 0
    chunks_reused: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


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
    per_query = _positives_per_query(positives)
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


def _positives_per_query(positives: Any) -> int | None:
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


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def mine_hard_negatives(
    dataset: Dataset,
    corpus: Dataset,
    model: SentenceTransformer | str | Path | None = None,
    *,
    num_negatives: int = 8,
    range_min: int = 0,
    range_max: int = 100,
    sampling: Literal["top", "random"] = "top",
    seed: int = 0,
    query_column: str = "query",
    positive_column: str = "positive",
    cache_dir: str | Path | None = None,
    chunk_size: int = 4096,
    batch_size: int = 64,
    query_batch_size: int = 1024,
    factory: str = "Flat",
    with_ids: bool = False,
    return_stats: bool = False,
    show_progress_bar: bool | None = None,
) -> Dataset | tuple[Dataset, MiningStats]:
    """Mine hard negatives for (query, positive) rows from ``corpus`` with the student ``model``.

    For query q with positives P_q (all rows with the same query text, a list-valued positive, and the ids
    in an optional ``positive_id`` column), let R_q be the FAISS ranking of the corpus by
    ``sim(E_Q(q), E_P(d))`` with every passage whose id or exact text is in P_q removed. The candidates are
    ``R_q[range_min:range_max]``; ``num_negatives`` of them are kept: the first ones (``sampling="top"``) or a
    uniform sample without replacement in rank order (``sampling="random"``, seeded by ``(seed, query
    number)``). Queries with fewer than ``num_negatives`` candidates are dropped (counted in the stats).

    Args:
        dataset: rows with a query column and a positive column (a string or a list of strings); duplicated
            queries are merged into one query with several positives. An optional ``positive_id`` column
            (string or list) lets positives be excluded by corpus id too, and an optional ``exclude_ids`` column
            (list of corpus ids, e.g. from :func:`training_pairs`) names further passages that are never negatives
            (known positives without a row of their own).
        corpus: ``Dataset`` with columns ``id`` and ``text`` (RAG24/BEIR ``RetrievalData.corpus``).
        model: the current student (``SentenceTransformer``, Hub id or folder; default the embedded MiniLM).
        num_negatives: negatives per row (mine more than you train on when a false-negative filter follows).
        range_min, range_max: 0-based rank range (after removing positives) the negatives come from.
        sampling: ``"top"`` or ``"random"``.
        seed: seed of the random sampling.
        query_column, positive_column: input column names.
        cache_dir: where :class:`CorpusEmbeddingCache` keeps corpus embeddings (``None``: in memory only).
        chunk_size: passages per encoded (and cached) chunk.
        batch_size: encoding batch size.
        query_batch_size: queries per FAISS search call.
        factory: ``faiss.index_factory`` string (``"Flat"`` is exact).
        with_ids: also output ``query_id`` (when the input has it), ``positive_id`` and ``negative_ids`` columns, for
            analysis; drop them before training (the trainer treats every column as an input).
        return_stats: also return a :class:`MiningStats`.
        show_progress_bar: progress bars for encoding and searching.

    Returns:
        A ``Dataset`` with columns ``query``, ``positive``, ``negative_1`` .. ``negative_{num_negatives}`` (the
        sentence-transformers n-tuple layout), one row per (query, positive).

    Example:
        >>> from sentence_transformers import SentenceTransformer
        >>> from md2pr_st.models import resolve_model_name
        >>> model = SentenceTransformer(resolve_model_name(None), device="cpu")
        >>> corpus = Dataset.from_dict({
        ...     "id": ["p", "n1", "n2", "n3"],
        ...     "text": ["Paris is the capital of France.", "Lyon is a city in France.", "Tea is a drink.",
        ...              "Berlin is the capital of Germany."],
        ... })
        >>> pairs = Dataset.from_dict({"query": ["capital of France"], "positive": ["Paris is the capital of France."]})
        >>> mined = mine_hard_negatives(pairs, corpus, model, num_negatives=2, show_progress_bar=False)
        >>> mined.column_names
        ['query', 'positive', 'negative_1', 'negative_2']
        >>> "Paris is the capital of France." in (mined[0]["negative_1"], mined[0]["negative_2"])
        False
    """
    from sentence_transformers import SentenceTransformer

    from md2pr_st.models import resolve_model_name

    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}.")
    if range_min < 0 or range_max <= range_min:
        raise ValueError(
            f"The rank range must satisfy 0 <= range_min < range_max, got range_min={range_min}, "
            f"range_max={range_max}."
        )
    if num_negatives > range_max - range_min:
        raise ValueError(
            f"Cannot take {num_negatives} negatives from ranks {range_min}..{range_max - 1} "
            f"({range_max - range_min} candidates). Raise range_max or lower num_negatives."
        )
    if sampling not in ("top", "random"):
        raise ValueError(f"sampling must be 'top' or 'random', got {sampling!r}.")
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}.")
    missing = [c for c in (query_column, positive_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The training dataset lacks the column(s) {missing} (it has {dataset.column_names}). Name the query "
            f"and positive columns with query_column=/positive_column=, or build the rows with training_pairs(data)."
        )
    if len(dataset) == 0:
        raise ValueError("The training dataset is empty: nothing to mine negatives for.")
    _check_corpus(corpus)
    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(resolve_model_name(model))
    stats = MiningStats(rows_in=len(dataset), corpus_size=len(corpus))

    # Group the rows by query text: each query is encoded and searched once.
    order: dict[str, int] = {}
    positives: list[list[str]] = []
    positive_ids: list[list[str | None]] = []
    query_ids: list[str | None] = []
    has_pid = "positive_id" in dataset.column_names
    has_qid = "query_id" in dataset.column_names
    has_exclude = "exclude_ids" in dataset.column_names
    columns = [query_column, positive_column] + [
        c for c, present in (("positive_id", has_pid), ("query_id", has_qid), ("exclude_ids", has_exclude)) if present
    ]
    extra_excluded: list[set[str]] = []
    for i, row in enumerate(dataset.select_columns(columns)):
        query = row[query_column]
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"Row {i} has an empty or missing {query_column!r}: every row needs a query text.")
        texts = _as_list(row[positive_column])
        ids = _as_list(row["positive_id"]) if has_pid else [None] * len(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError(
                f"Row {i} (query {query[:60]!r}) has no positive (the {positive_column!r} value is "
                f"{row[positive_column]!r}). Every query needs at least one positive passage: drop such rows or add "
                "their positive."
            )
        if len(ids) != len(texts):
            raise ValueError(f"Row {i}: {len(texts)} positives but {len(ids)} positive ids; they must pair up.")
        q = order.setdefault(query, len(order))
        if q == len(positives):
            positives.append([])
            positive_ids.append([])
            query_ids.append(row["query_id"] if has_qid else None)
            extra_excluded.append(set())
        if has_exclude:
            extra_excluded[q].update(str(d) for d in _as_list(row["exclude_ids"]))
        for text, pid in zip(texts, ids):
            if text not in positives[q]:
                positives[q].append(text)
                positive_ids[q].append(pid)
    queries = list(order)
    stats.queries = len(queries)

    # One pass over the corpus: its fingerprint, and the rows that hold a positive (by id or by text).
    wanted_text = {text: [] for plist in positives for text in plist}
    wanted_id = {pid: [] for plist in positive_ids for pid in plist if pid is not None}
    wanted_id.update({doc_id: [] for ids in extra_excluded for doc_id in ids if doc_id not in wanted_id})

    def corpus_parts() -> Iterator[str]:
        yield "ids"
        for start, ids in _corpus_chunks(corpus, chunk_size, "id"):
            for offset, doc_id in enumerate(ids):
                if doc_id in wanted_id:
                    wanted_id[doc_id].append(start + offset)
            yield from ids
        yield "texts"
        for start, texts in _corpus_chunks(corpus, chunk_size, "text"):
            for offset, text in enumerate(texts):
                if text in wanted_text:
                    wanted_text[text].append(start + offset)
            yield from texts

    corpus_fp = fingerprint(corpus_parts())
    excluded: list[set[int]] = []
    for plist, pids, extra in zip(positives, positive_ids, extra_excluded):
        rows = {r for t in plist for r in wanted_text[t]} | {r for p in pids if p is not None for r in wanted_id[p]}
        excluded.append(rows | {r for doc_id in extra for r in wanted_id[doc_id]})
    stats.positives_excluded = sum(len(rows) for rows in excluded)

    cache = CorpusEmbeddingCache(
        model,
        corpus,
        Path(cache_dir) if cache_dir is not None else None,
        chunk_size=chunk_size,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        corpus_fingerprint=corpus_fp,
    )
    reused = len(cache.finished_chunks())
    index = cache.build_index(factory)
    stats.chunks_encoded, stats.chunks_reused = cache.encoded_chunks, reused
    query_embeddings = encode(model, queries, "query", batch_size, show_progress_bar)

    max_excluded = max(len(rows) for rows in excluded)
    k = min(range_max + max_excluded, len(corpus))
    chosen: list[list[int] | None] = []
    for start in tqdm(range(0, len(queries), query_batch_size), desc="Searching", disable=show_progress_bar is False):
        _, found = index.index.search(query_embeddings[start : start + query_batch_size], k)
        for offset, rows in enumerate(found):
            q = start + offset
            ranking = [int(r) for r in rows if r >= 0 and int(r) not in excluded[q]][range_min:range_max]
            if len(ranking) < num_negatives:
                chosen.append(None)
                continue
            if sampling == "top":
                picked = ranking[:num_negatives]
            else:
                rng = np.random.default_rng([seed, q])
                picked = [ranking[i] for i in sorted(rng.choice(len(ranking), num_negatives, replace=False))]
            chosen.append(picked)

    needed = sorted({r for picked in chosen if picked for r in picked})
    text_of = dict(zip(needed, corpus.select(needed)["text"])) if needed else {}
    id_of = dict(zip(needed, corpus.select(needed)["id"])) if needed and with_ids else {}
    out: dict[str, list] = {"query": [], "positive": []}
    out.update({f"negative_{j}": [] for j in range(1, num_negatives + 1)})
    if with_ids:
        out.update({"query_id": [], "positive_id": [], "negative_ids": []})
    for q, picked in enumerate(chosen):
        if picked is None:
            stats.dropped_queries += 1
            stats.dropped_rows += len(positives[q])
            continue
        for text, pid in zip(positives[q], positive_ids[q]):
            out["query"].append(queries[q])
            out["positive"].append(text)
            for j, row in enumerate(picked, 1):
                out[f"negative_{j}"].append(text_of[row])
            if with_ids:
                out["query_id"].append(query_ids[q])
                out["positive_id"].append(pid)
                out["negative_ids"].append([id_of[row] for row in picked])
    if with_ids and not has_qid:
        del out["query_id"]
    stats.rows_out = len(out["query"])
    stats.negatives = stats.rows_out * num_negatives
    if stats.dropped_queries:
        logger.warning(
            "%d queries (%d rows) had fewer than %d candidates in ranks %d..%d after removing positives and were "
            "dropped. Raise range_max or lower num_negatives to keep them.",
            stats.dropped_queries,
            stats.dropped_rows,
            num_negatives,
            range_min,
            range_max - 1,
        )
    result = Dataset.from_dict(out)
    return (result, stats) if return_stats else result


def save_mining_stats(stats: MiningStats, path: str | Path) -> Path:
    """Write :class:`MiningStats` as JSON, atomically."""
    return write_json(path, stats.to_dict())


def load_manifest(cache_path: str | Path) -> dict:
    """The manifest of a :class:`CorpusEmbeddingCache` folder."""
    return json.loads((Path(cache_path) / _MANIFEST).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------
# md2pr mine
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MineArguments:
    """Options of ``md2pr mine``."""

    input: str = dataclasses.field(
        default="rag24",
        metadata={
            "help": "Training queries: 'rag24', a BEIR-layout folder (positives from the qrels of --split), or a "
            "`datasets` folder (save_to_disk) with query/positive columns (then --corpus is required)."
        },
    )
    output: str = dataclasses.field(default="mined", metadata={"help": "Output `datasets` folder (n-tuples)."})
    corpus: str | None = dataclasses.field(
        default=None, metadata={"help": "A `datasets` folder with id/text, or a BEIR folder (its corpus.jsonl)."}
    )
    split: str = dataclasses.field(default="train", metadata={"help": "Split of rag24 / BEIR input."})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "The current student (Hub id or folder; default the embedded MiniLM)."}
    )
    num_negatives: int = dataclasses.field(default=16, metadata={"help": "Negatives (candidates) per row."})
    range_min: int = dataclasses.field(default=0, metadata={"help": "First rank (0-based, positives removed)."})
    range_max: int = dataclasses.field(default=100, metadata={"help": "Ranks below this are candidates."})
    sampling: str = dataclasses.field(default="top", metadata={"help": "'top' or 'random'."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of random sampling."})
    min_grade: int = dataclasses.field(default=2, metadata={"help": "Qrels grade that makes a positive."})
    positives: str = dataclasses.field(
        default="all",
        metadata={"help": "Rows per query: 'all' judged positives, the 'best', or the k best ('2')."},
    )
    skip_queries_without_positive: bool = dataclasses.field(
        default=True, metadata={"help": "Drop queries without a positive (else: error)."}
    )
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Corpus-embedding cache folder (default: OUTPUT.embeddings)."}
    )
    chunk_size: int = dataclasses.field(default=4096, metadata={"help": "Passages per cached chunk."})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Encoding batch size."})
    max_seq_length: int | None = dataclasses.field(default=None, metadata={"help": "Student max tokens."})
    factory: str = dataclasses.field(default="Flat", metadata={"help": "faiss.index_factory string."})
    with_ids: bool = dataclasses.field(default=False, metadata={"help": "Add id columns (for analysis only)."})
    data_cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "RAG24 data cache folder."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})


def _load_corpus(path: str) -> Dataset:
    from datasets import load_from_disk

    from md2pr_st.data import _read_jsonl

    folder = Path(path)
    if (folder / "corpus.jsonl").is_file():
        ids, texts = _read_jsonl(folder / "corpus.jsonl", "corpus")
        return Dataset.from_dict({"id": ids, "text": texts})
    if folder.is_dir():
        return load_from_disk(str(folder))
    raise FileNotFoundError(f"--corpus {path} is neither a `datasets` folder nor a BEIR folder with corpus.jsonl.")


def run_mine(args: MineArguments) -> dict:
    """``md2pr mine``: mine hard negatives and save the n-tuples as a `datasets` folder."""
    import sys

    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer

    from md2pr_st.data import load_retrieval_data
    from md2pr_st.models import resolve_model_name

    source = Path(args.input)
    if args.input.startswith("rag24") or (source / "corpus.jsonl").is_file():
        kwargs = {"cache_dir": args.data_cache_dir} if args.input.startswith("rag24") else {}
        data = load_retrieval_data(args.input, args.split, **kwargs)
        pairs = training_pairs(data, args.min_grade, args.positives, args.skip_queries_without_positive)
        corpus = _load_corpus(args.corpus) if args.corpus else data.corpus
    elif source.is_dir():
        pairs = load_from_disk(str(source))
        if args.corpus is None:
            raise ValueError("A `datasets` input needs --corpus (a `datasets` folder with id/text or a BEIR folder).")
        corpus = _load_corpus(args.corpus)
    else:
        raise FileNotFoundError(f"--input {args.input}: not 'rag24', a BEIR folder or a `datasets` folder.")
    model = SentenceTransformer(resolve_model_name(args.model), device=args.device)
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    mined, stats = mine_hard_negatives(
        pairs,
        corpus,
        model,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        sampling=args.sampling,
        seed=args.seed,
        cache_dir=args.cache_dir or f"{args.output.rstrip('/')}.embeddings",
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        factory=args.factory,
        with_ids=args.with_ids,
        return_stats=True,
        show_progress_bar=True,
    )
    with atomic_path(args.output, is_dir=True) as tmp:
        mined.save_to_disk(str(tmp))
        save_mining_stats(stats, tmp / "md2pr_mining.json")
    print(
        f"Mined {stats.rows_out:,} rows ({stats.queries:,} queries, {args.num_negatives} negatives each; "
        f"{stats.dropped_rows} rows dropped) -> {args.output}",
        file=sys.stderr,
    )
    return stats.to_dict()
