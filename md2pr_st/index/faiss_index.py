"""A FAISS index over a corpus, with its document ids and the fingerprints of what it was built from.

Scores are inner products of the vectors :func:`~md2pr_st.index.encode` returns (cosine for normalised models).
A saved index records a fingerprint of the model (weights and configuration), of the corpus (ids and texts) and
the factory string; :meth:`FaissIndex.load` refuses to serve it to a different model or corpus, because the
vectors would silently mean something else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from md2pr_st import distributed
from md2pr_st.data import corpus_fingerprint
from md2pr_st.index.encoding import encode
from md2pr_st.models import model_fingerprint
from md2pr_st.utils import atomic_path, write_json

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

_INDEX_FILE = "index.faiss"
_IDS_FILE = "doc_ids.json"
_MANIFEST_FILE = "md2pr_index.json"
# HNSW defaults: efConstruction 100 builds a graph good enough for recall@10 >= 0.99 at efSearch 128 on embedding-like
# data (benchmarks/retrieval.py; FAISS's own efConstruction of 40 plateaus below 0.99 on clustered 384-d vectors).
DEFAULT_HNSW_EF_CONSTRUCTION = 100
DEFAULT_HNSW_EF_SEARCH = 128
# factory="auto" (the default of mining and evaluation): exact search below this many passages, HNSW32 from it on,
# tuned on the run's own queries by FaissIndex.calibrate. HNSW's recall depends on the data's neighbourhood structure
# (clustered 1M x 384: 0.992 at 85x the speed of exact search; RAG24 0.999; but 0.29 on the nearly isotropic
# synthetic 1M corpus of benchmarks/scale.py), hence the calibration and its fallback to exact search.
AUTO_HNSW_MIN_SIZE = 1_000_000
# What calibrate aims for: recall@k of the exact top k, on up to this many of the run's queries.
CALIBRATION_TARGET = 0.99
CALIBRATION_QUERIES = 200
CALIBRATION_MAX_EF_SEARCH = 1024


def resolve_factory(factory: str, size: int) -> str:
    """The ``faiss.index_factory`` string for a corpus of ``size`` passages: ``factory`` itself, or for ``"auto"``
    exact search (``"Flat"``) below :data:`AUTO_HNSW_MIN_SIZE` passages and ``"HNSW32"`` from it on.

    Example:
        >>> resolve_factory("auto", 6_000), resolve_factory("auto", 8_800_000), resolve_factory("IVF4096,PQ48", 10)
        ('Flat', 'HNSW32', 'IVF4096,PQ48')
    """
    if factory == "auto":
        return "HNSW32" if size >= AUTO_HNSW_MIN_SIZE else "Flat"
    return factory


class IndexMismatchError(ValueError):
    """A saved index was built with another model or corpus than the one it is loaded for."""


class FaissIndex:
    """A FAISS index with its document id mapping and the fingerprints of what it was built from.

    Args:
        index: a FAISS index over inner-product scores.
        doc_ids: the document id of each row, in insertion order.
        model_fingerprint: see :func:`model_fingerprint` (``None`` when unknown).
        corpus_fingerprint: see :func:`corpus_fingerprint` (``None`` when unknown).
        factory: the ``faiss.index_factory`` string the index was built with.

    Example:
        >>> import numpy as np
        >>> vectors = np.eye(3, dtype="float32")
        >>> index = FaissIndex.build(vectors, ["a", "b", "c"])
        >>> scores, ids = index.search(np.array([[0.1, 0.9, 0.0]], dtype="float32"), k=2)
        >>> ids
        [['b', 'a']]
    """

    def __init__(
        self,
        index: faiss.Index,
        doc_ids: Sequence[str],
        model_fingerprint: str | None = None,
        corpus_fingerprint: str | None = None,
        factory: str = "Flat",
    ) -> None:
        if index.ntotal != len(doc_ids):
            raise ValueError(f"The index holds {index.ntotal} vectors but {len(doc_ids)} document ids were given.")
        self.index = index
        self.exact_fallback: faiss.Index | None = None  # set by calibrate when the graph cannot reach its target
        self.doc_ids = list(doc_ids)
        self.model_fingerprint = model_fingerprint
        self.corpus_fingerprint = corpus_fingerprint
        self.factory = factory

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def __repr__(self) -> str:
        return f"FaissIndex(factory={self.factory!r}, size={len(self):,}, dim={self.dim})"

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        doc_ids: Sequence[str],
        factory: str = "Flat",
        *,
        model_fingerprint: str | None = None,
        corpus_fingerprint: str | None = None,
        ef_search: int = DEFAULT_HNSW_EF_SEARCH,
        ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION,
        nprobe: int = 32,
        train_size: int | None = 100_000,
        seed: int = 0,
    ) -> FaissIndex:
        """Index ``embeddings`` (one row per id) with any ``faiss.index_factory`` string.

        ``"Flat"`` (default) is exact search; ``"auto"`` is ``"Flat"`` below :data:`AUTO_HNSW_MIN_SIZE` passages and
        ``"HNSW32"`` from there (:func:`resolve_factory`). ``"HNSW32"``, ``"IVF4096,PQ48"`` etc. are approximate:
        ``ef_construction`` (HNSW graph quality), ``ef_search`` (HNSW) and ``nprobe`` (IVF) set their breadth, and
        indexes that need training are trained on at most ``train_size`` rows sampled with ``seed``.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise ValueError(f"Expected a non-empty 2-d array of embeddings, got shape {embeddings.shape}.")
        if len(embeddings) != len(doc_ids):
            raise ValueError(f"{len(embeddings)} embeddings but {len(doc_ids)} document ids: they must match.")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("Document ids must be unique to map search results back to documents.")
        if not np.isfinite(embeddings).all():
            raise ValueError("Some embeddings are NaN or infinite; check the model and the input texts.")
        factory = resolve_factory(factory, len(embeddings))
        index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        hnsw = _find(index, "hnsw")
        if hnsw is not None:
            hnsw.hnsw.efConstruction = ef_construction
        if not index.is_trained:
            sample = embeddings
            if train_size is not None and len(embeddings) > train_size:
                rows = np.random.default_rng(seed).choice(len(embeddings), train_size, replace=False)
                sample = embeddings[np.sort(rows)]
            index.train(sample)
        index.add(embeddings)
        out = cls(index, doc_ids, model_fingerprint, corpus_fingerprint, factory)
        out.set_search_params(ef_search=ef_search, nprobe=nprobe)
        return out

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Set HNSW ``efSearch`` and IVF ``nprobe`` where the index has them."""
        hnsw = _find(self.index, "hnsw")
        if hnsw is not None and ef_search is not None:
            hnsw.hnsw.efSearch = ef_search
        ivf = _find(self.index, "nprobe")
        if ivf is not None and nprobe is not None:
            ivf.nprobe = nprobe

    @classmethod
    def from_model(
        cls,
        model: SentenceTransformer,
        corpus: Dataset,
        factory: str = "Flat",
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        embeddings: np.ndarray | None = None,
        **kwargs,
    ) -> FaissIndex:
        """Encode ``corpus`` (columns ``id``, ``text``) as documents with ``model`` and index it.

        Pass ``embeddings`` to index vectors computed earlier with the same model (they are not recomputed).
        """
        ids, texts = corpus["id"], corpus["text"]
        if embeddings is None:
            embeddings = encode(model, texts, "document", batch_size, show_progress_bar)
        return cls.build(
            embeddings,
            ids,
            factory,
            model_fingerprint=model_fingerprint(model),
            corpus_fingerprint=corpus_fingerprint(corpus),
            **kwargs,
        )

    def search(self, query_embeddings: np.ndarray, k: int = 100) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` documents per query: ``(scores (n, k'), ids)`` with ``k' = min(k, len(self))``, best first."""
        query_embeddings = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if query_embeddings.ndim != 2 or query_embeddings.shape[1] != self.dim:
            raise ValueError(
                f"Query embeddings have shape {query_embeddings.shape}; this index expects (n, {self.dim})."
            )
        scores, rows = self.search_rows(query_embeddings, k)
        ids = [[self.doc_ids[r] for r in row if r >= 0] for row in rows]
        return scores, ids

    def search_rows(self, query_embeddings: np.ndarray, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with corpus row numbers instead of ids (``-1`` where fewer than ``k`` were found)."""
        query_embeddings = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        return (self.exact_fallback or self.index).search(query_embeddings, min(k, len(self)))

    def calibrate(
        self,
        query_embeddings: np.ndarray,
        k: int = 10,
        target: float = CALIBRATION_TARGET,
        max_ef_search: int = CALIBRATION_MAX_EF_SEARCH,
        max_queries: int = CALIBRATION_QUERIES,
    ) -> dict | None:
        """Tune an HNSW index on the run's own queries, so that approximate search is as good as exact search.

        On up to ``max_queries`` of the queries (evenly spaced), recall@k = mean over queries of
        ``|HNSW top k ∩ exact top k| / k``, the exact top k searched in the vectors the graph itself stores (no
        second copy). ``efSearch`` doubles until the recall reaches ``target`` or ``max_ef_search``; if it is still
        below ``target`` there, :meth:`search` answers by exact search from then on (and a warning says so).
        Indexes that are not a plain HNSW graph (``Flat``, IVF, a transform in front) are left as they are.

        Returns:
            ``{"ef_search", "recall", "k", "queries", "exact"}``, or None for an index that has nothing to tune.

        Example:
            >>> import numpy as np
            >>> vectors = np.random.default_rng(0).normal(size=(500, 16)).astype("float32")
            >>> index = FaissIndex.build(vectors, [str(i) for i in range(500)], "HNSW8", ef_search=1)
            >>> result = index.calibrate(vectors[:50], k=10)  # efSearch 1 finds few: it is raised until recall >= 0.99
            >>> result["exact"], result["recall"] >= 0.99, result["ef_search"] > 1
            (False, True, True)
        """
        graph = faiss.downcast_index(self.index)
        if not hasattr(graph, "hnsw") or getattr(graph, "storage", None) is None or len(query_embeddings) == 0:
            return None
        queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if len(queries) > max_queries:
            queries = queries[np.linspace(0, len(queries) - 1, max_queries).round().astype(int)]
        k = min(k, len(self))
        storage = faiss.downcast_index(graph.storage)
        _, exact = storage.search(queries, k)
        graph.hnsw.efSearch = max(graph.hnsw.efSearch, k)  # fewer candidates than k cannot hold the top k
        max_ef_search = max(max_ef_search, k)
        while True:
            _, found = graph.search(queries, k)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, found)]))
            if recall >= target or graph.hnsw.efSearch >= max_ef_search:
                break
            graph.hnsw.efSearch = min(2 * graph.hnsw.efSearch, max_ef_search)
        if distributed.sharing():  # each process built its own graph: all follow the main process's decision
            graph.hnsw.efSearch, recall = distributed.broadcast((int(graph.hnsw.efSearch), recall))
        self.exact_fallback = storage if recall < target else None
        if self.exact_fallback is not None:
            logger.warning(
                "HNSW reaches recall@%d %.3f on %d of these queries at efSearch %d, below %.2f: searching exactly "
                "instead (slower, as good as exact). Pass factory='Flat' to skip building the graph.",
                k, recall, len(queries), graph.hnsw.efSearch, target,
            )  # fmt: skip
        else:
            logger.info("HNSW tuned on %d queries: efSearch %d, recall@%d %.3f.", len(queries), graph.hnsw.efSearch,
                        k, recall)  # fmt: skip
        return {"ef_search": int(graph.hnsw.efSearch), "recall": round(recall, 4), "k": k, "queries": len(queries),
                "exact": self.exact_fallback is not None}  # fmt: skip

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``index.faiss``, ``doc_ids.json`` and a manifest with the fingerprints and the factory, atomically;
        a folder md2pr did not write is refused unless ``overwrite``."""
        folder = Path(folder)
        with atomic_path(folder, is_dir=True, overwrite=overwrite, kind="index") as tmp:
            faiss.write_index(self.index, str(tmp / _INDEX_FILE))
            (tmp / _IDS_FILE).write_text(json.dumps(self.doc_ids), encoding="utf-8")
            write_json(
                tmp / _MANIFEST_FILE,
                {
                    "factory": self.factory,
                    "dim": self.dim,
                    "size": len(self),
                    "model_fingerprint": self.model_fingerprint,
                    "corpus_fingerprint": self.corpus_fingerprint,
                },
            )
        return folder

    @classmethod
    def load(
        cls,
        folder: str | Path,
        model: SentenceTransformer | str | None = None,
        corpus: Dataset | str | None = None,
        factory: str | None = None,
    ) -> FaissIndex:
        """Load an index saved by :meth:`save`.

        Args:
            folder: the folder written by :meth:`save`.
            model: the model that will encode queries (or its :func:`model_fingerprint`); checked against the
                fingerprint stored with the index.
            corpus: the corpus the ids refer to (a ``Dataset`` with ``id``/``text`` or its
                :func:`corpus_fingerprint`); checked likewise.
            factory: the ``faiss.index_factory`` string asked for; an index built with another one (an approximate
                index where exact search was asked for, say) is refused.

        Raises:
            IndexMismatchError: the index was built from another model, corpus or factory.
            ValueError: the folder is incomplete or its files disagree (a corrupt index).
        """
        folder = Path(folder)
        missing = [name for name in (_INDEX_FILE, _IDS_FILE, _MANIFEST_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a saved md2pr index: {', '.join(missing)} missing.")
        try:
            manifest = json.loads((folder / _MANIFEST_FILE).read_text(encoding="utf-8"))
            doc_ids = json.loads((folder / _IDS_FILE).read_text(encoding="utf-8"))
            index = faiss.read_index(str(folder / _INDEX_FILE))
        except Exception as exc:
            raise ValueError(f"The index in {folder} is corrupt ({exc}); rebuild it.") from exc
        if index.ntotal != len(doc_ids) or manifest.get("size") != len(doc_ids):
            raise ValueError(
                f"The index in {folder} is corrupt: {index.ntotal} vectors, {len(doc_ids)} ids, manifest says "
                f"{manifest.get('size')}. Rebuild it."
            )
        out = cls(index, doc_ids, manifest.get("model_fingerprint"), manifest.get("corpus_fingerprint"))
        out.factory = manifest.get("factory", "Flat")
        if factory is not None:
            factory = resolve_factory(factory, len(doc_ids))
        if factory is not None and factory.replace(" ", "") != str(out.factory).replace(" ", ""):
            raise IndexMismatchError(
                f"The index in {folder} was built with the factory {out.factory!r}, not {factory!r}: its results "
                f"would be {out.factory}'s. Rebuild it with {factory!r}, or ask for {out.factory!r}."
            )
        if model is not None:
            expected = model if isinstance(model, str) else model_fingerprint(model)
            if expected != out.model_fingerprint:
                raise IndexMismatchError(
                    f"The index in {folder} was built with a different model (fingerprint "
                    f"{str(out.model_fingerprint)[:12]}, this model {expected[:12]}). Its vectors do not match this "
                    "model's queries: rebuild the index with this model."
                )
        if corpus is not None:
            expected = corpus if isinstance(corpus, str) else corpus_fingerprint(corpus)
            if expected != out.corpus_fingerprint:
                raise IndexMismatchError(
                    f"The index in {folder} was built from a different corpus (fingerprint "
                    f"{str(out.corpus_fingerprint)[:12]}, this corpus {expected[:12]}): rebuild it for this corpus."
                )
        return out


def _find(index: faiss.Index, attribute: str):
    """The (possibly wrapped) FAISS index object that has ``attribute``, or None."""
    index = faiss.downcast_index(index)
    while index is not None:
        if hasattr(index, attribute):
            return index
        inner = getattr(index, "index", None) or getattr(index, "base_index", None)
        index = faiss.downcast_index(inner) if inner is not None else None
    return None


def retrieve(
    model: SentenceTransformer,
    queries: Sequence[str],
    index: FaissIndex,
    k: int = 100,
    batch_size: int = 64,
    show_progress_bar: bool | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Encode ``queries`` with ``model`` and return the index's top-``k`` ``(scores, doc_ids)``."""
    return index.search(encode(model, queries, "query", batch_size, show_progress_bar), k)
