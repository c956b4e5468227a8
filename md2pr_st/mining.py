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

Corpus embeddings, the expensive part, come from a :class:`~md2pr_st.index.CorpusEmbeddingCache`: computed once per
model state, in chunks, cached on disk and resumable.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from md2pr_st.config import SAMPLINGS
from md2pr_st.data import negative_columns
from md2pr_st.data.pairs import warn_if_swapped
from md2pr_st.index import CorpusEmbeddingCache, check_corpus, encode
from md2pr_st.models import resolve_model_name
from md2pr_st.utils import write_json
from md2pr_st.validation import check_choice, check_range, check_rank_range

logger = logging.getLogger(__name__)

__all__ = ["MiningStats", "mine_hard_negatives", "negative_columns", "save_mining_stats"]


@dataclasses.dataclass
class MiningStats:
    """What one mining run did (``mine_hard_negatives(..., return_stats=True)``)."""

    queries: int = 0
    rows_in: int = 0
    rows_out: int = 0
    dropped_queries: int = 0
    dropped_rows: int = 0
    positives_excluded: int = 0
    positives_not_in_corpus: int = 0  # (query, positive) pairs whose positive the corpus holds under no id or text
    negatives: int = 0
    corpus_size: int = 0
    chunks_encoded: int = 0
    chunks_reused: int = 0
    index_calibration: dict | None = None  # what FaissIndex.calibrate measured (an approximate index only)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    factory: str = "auto",
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
        factory: ``faiss.index_factory`` string (``"Flat"`` is exact); ``"auto"`` (default) is exact below 1M
            passages, then ``"HNSW32"`` (:func:`~md2pr_st.index.resolve_factory`) tuned on these queries to recall@k
            >= 0.99 of exact search, or exact search where it cannot (:meth:`FaissIndex.calibrate`).
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
    _check_mining_settings(dataset, num_negatives, range_min, range_max, sampling, query_column, positive_column)
    for name, value in (
        ("chunk_size", chunk_size),
        ("batch_size", batch_size),
        ("query_batch_size", query_batch_size),
    ):
        check_range(name, value)
    warn_if_swapped(dataset, query_column, positive_column, "mining input")
    check_corpus(corpus)
    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(resolve_model_name(model))
    stats = MiningStats(rows_in=len(dataset), corpus_size=len(corpus))
    queries = _group_by_query(dataset, query_column, positive_column)
    stats.queries = len(queries)
    excluded, stats.positives_not_in_corpus = _excluded_rows(queries, corpus, chunk_size)
    stats.positives_excluded = sum(len(rows) for rows in excluded)
    _check_positives_in_corpus(stats.positives_not_in_corpus, sum(len(q.positives) for q in queries))

    cache = CorpusEmbeddingCache(
        model, corpus, cache_dir, chunk_size=chunk_size, batch_size=batch_size, show_progress_bar=show_progress_bar
    )
    reused = len(cache.finished_chunks())
    index = cache.build_index(factory)
    stats.chunks_encoded, stats.chunks_reused = cache.encoded_chunks, reused
    query_embeddings = encode(model, [q.text for q in queries], "query", batch_size, show_progress_bar)
    k = min(range_max + max(len(rows) for rows in excluded), len(corpus))
    if factory == "auto":  # an approximate index (1M passages and more) tuned on these queries, or exact search
        stats.index_calibration = index.calibrate(query_embeddings, k)
    chosen: list[list[int] | None] = []
    for start in tqdm(range(0, len(queries), query_batch_size), desc="Searching", disable=show_progress_bar is False):
        _, found = index.search_rows(query_embeddings[start : start + query_batch_size], k)
        for offset, rows in enumerate(found):
            q = start + offset
            ranking = [int(r) for r in rows if r >= 0 and int(r) not in excluded[q]][range_min:range_max]
            chosen.append(_pick(ranking, num_negatives, sampling, seed, q))
    result = _rows(queries, chosen, corpus, num_negatives, with_ids, stats)
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
    return (result, stats) if return_stats else result


def _check_mining_settings(
    dataset: Dataset,
    num_negatives: int,
    range_min: int,
    range_max: int,
    sampling: str,
    query_column: str,
    positive_column: str,
) -> None:
    for name, value in (("num_negatives", num_negatives), ("range_min", range_min)):
        check_range(name, value)
    check_rank_range(range_min, range_max, num_negatives, "negatives")
    check_choice("sampling", sampling, SAMPLINGS, quoted=True)
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


@dataclasses.dataclass
class _Query:
    """One distinct query of the input rows: its positives (texts and ids, in row order) and the ids never to mine."""

    text: str
    query_id: str | None
    positives: list[str] = dataclasses.field(default_factory=list)
    positive_ids: list[str | None] = dataclasses.field(default_factory=list)
    exclude_ids: set[str] = dataclasses.field(default_factory=set)


def _group_by_query(dataset: Dataset, query_column: str, positive_column: str) -> list[_Query]:
    """Merge the rows by query text (each query is encoded and searched once), checking every text."""
    optional = [c for c in ("positive_id", "query_id", "exclude_ids") if c in dataset.column_names]
    queries: dict[str, _Query] = {}
    for i, row in enumerate(dataset.select_columns([query_column, positive_column, *optional])):
        text = row[query_column]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Row {i} has an empty or missing {query_column!r}: every row needs a query text.")
        texts = _as_list(row[positive_column])
        ids = _as_list(row["positive_id"]) if "positive_id" in row else [None] * len(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError(
                f"Row {i} (query {text[:60]!r}) has no positive (the {positive_column!r} value is "
                f"{row[positive_column]!r}). Every query needs at least one positive passage: drop such rows or add "
                "their positive."
            )
        if len(ids) != len(texts):
            raise ValueError(f"Row {i}: {len(texts)} positives but {len(ids)} positive ids; they must pair up.")
        query = queries.setdefault(text, _Query(text, row.get("query_id")))
        query.exclude_ids.update(str(d) for d in _as_list(row.get("exclude_ids")))
        for positive, pid in zip(texts, ids):
            if positive not in query.positives:
                query.positives.append(positive)
                query.positive_ids.append(pid)
    return list(queries.values())


def _check_positives_in_corpus(missing: int, total: int) -> None:
    """Positives that are not in the corpus cannot be kept out of the negatives: none found is an error (the input
    and the corpus do not belong together), some missing a warning with the counts."""
    if missing and missing == total:
        raise ValueError(
            f"None of the {total:,} positives of the mining input is in the corpus (by id or exact text): the input "
            "and the corpus come from different collections, or their texts differ. Give the corpus the positives "
            "come from (--corpus), so that no query's own positive is mined as its negative."
        )
    if missing:
        logger.warning(
            "%d of %d positives of the mining input are not in the corpus (by id or exact text): they cannot be kept "
            "out of the mined negatives. Check that the input and the corpus come from the same collection.",
            missing,
            total,
        )


def _excluded_rows(queries: list[_Query], corpus: Dataset, chunk_size: int) -> tuple[list[set[int]], int]:
    """The corpus rows each query may never take as a negative: its positives by id and by exact text (a duplicate
    under another id is still a positive), and its ``exclude_ids``; and how many positives are in the corpus under
    neither. One pass over the corpus, chunk by chunk."""
    by_text: dict[str, list[int]] = {text: [] for q in queries for text in q.positives}
    by_id: dict[str, list[int]] = {str(p): [] for q in queries for p in q.positive_ids if p is not None}
    by_id.update({doc_id: [] for q in queries for doc_id in q.exclude_ids})
    for start in range(0, len(corpus), chunk_size):
        chunk = corpus[start : start + chunk_size]
        for offset, (doc_id, text) in enumerate(zip(chunk["id"], chunk["text"])):
            if doc_id in by_id:
                by_id[doc_id].append(start + offset)
            if text in by_text:
                by_text[text].append(start + offset)
    excluded, missing = [], 0
    for q in queries:
        rows = {r for text in q.positives for r in by_text[text]}
        rows |= {r for p in q.positive_ids if p is not None for r in by_id[str(p)]}
        excluded.append(rows | {r for doc_id in q.exclude_ids for r in by_id[doc_id]})
        found = [
            by_text[text] or (pid is not None and by_id[str(pid)]) for text, pid in zip(q.positives, q.positive_ids)
        ]
        missing += sum(1 for hit in found if not hit)
    return excluded, missing


def _pick(ranking: list[int], num_negatives: int, sampling: str, seed: int, q: int) -> list[int] | None:
    """``num_negatives`` of a query's candidate rows (None when it has too few): the best, or a seeded sample."""
    if len(ranking) < num_negatives:
        return None
    if sampling == "top":
        return ranking[:num_negatives]
    rng = np.random.default_rng([seed, q])
    return [ranking[i] for i in sorted(rng.choice(len(ranking), num_negatives, replace=False))]


def _rows(
    queries: list[_Query],
    chosen: list[list[int] | None],
    corpus: Dataset,
    num_negatives: int,
    with_ids: bool,
    stats: MiningStats,
) -> Dataset:
    """The n-tuples: one row per (query, positive) with the query's negatives (texts read once per passage)."""
    needed = sorted({r for picked in chosen if picked for r in picked})
    selected = corpus.select(needed) if needed else None
    text_of = dict(zip(needed, selected["text"])) if needed else {}
    id_of = dict(zip(needed, selected["id"])) if needed and with_ids else {}
    out: dict[str, list] = {"query": [], "positive": []}
    out.update({f"negative_{j}": [] for j in range(1, num_negatives + 1)})
    if with_ids:
        out.update({"query_id": [], "positive_id": [], "negative_ids": []})
    for query, picked in zip(queries, chosen):
        if picked is None:
            stats.dropped_queries += 1
            stats.dropped_rows += len(query.positives)
            continue
        for text, pid in zip(query.positives, query.positive_ids):
            out["query"].append(query.text)
            out["positive"].append(text)
            for j, row in enumerate(picked, 1):
                out[f"negative_{j}"].append(text_of[row])
            if with_ids:
                out["query_id"].append(query.query_id)
                out["positive_id"].append(pid)
                out["negative_ids"].append([id_of[row] for row in picked])
    if with_ids and all(q.query_id is None for q in queries):
        del out["query_id"]
    stats.rows_out = len(out["query"])
    stats.negatives = stats.rows_out * num_negatives
    return Dataset.from_dict(out)


def save_mining_stats(stats: MiningStats, path: str | Path) -> Path:
    """Write :class:`MiningStats` as JSON, atomically."""
    return write_json(path, stats.to_dict())
