"""Corpus embeddings computed once per model state, in chunks, cached on disk and resumable.

Encoding the corpus is the expensive part of mining and evaluation. :class:`CorpusEmbeddingCache` encodes it in
chunks of ``chunk_size`` passages, each chunk written atomically to disk under a key made of the model's
fingerprint (weights and settings), the corpus fingerprint (ids and texts) and the chunk size. An interrupted run
finds the finished chunks and encodes only the rest; a new student (the next round) gets a new key. Only one chunk
of passage texts is held in memory at a time, and :meth:`CorpusEmbeddingCache.build_index` fills the index chunk by
chunk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from md2pr_st import distributed
from md2pr_st.data import corpus_fingerprint
from md2pr_st.index.encoding import encode
from md2pr_st.index.faiss_index import (
    DEFAULT_HNSW_EF_CONSTRUCTION,
    DEFAULT_HNSW_EF_SEARCH,
    FaissIndex,
    resolve_factory,
)
from md2pr_st.models import model_fingerprint
from md2pr_st.outputs import mark_output
from md2pr_st.utils import atomic_path, fingerprint, sha256_file, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# Bump when the on-disk layout of the embedding cache changes, so that old caches are not misread.
_CACHE_FORMAT = 1
_MANIFEST = "manifest.json"


def check_corpus(corpus: Dataset) -> None:
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


class CorpusEmbeddingCache:
    """Document embeddings of a corpus for one model, computed in chunks and cached on disk, resumable.

    The cache folder is ``folder / key[:16]`` with ``key = sha256(format, model_fingerprint, corpus_fingerprint,
    chunk_size)``; it holds ``manifest.json`` and ``chunk_00000.npy``, ``chunk_00001.npy``, ... (float32, one row
    per passage, in corpus order), each with its sha256 in ``chunk_00000.sha256``. Each chunk is written atomically,
    so a crash leaves finished chunks intact and the next :meth:`compute` encodes only the missing ones. A chunk
    that cannot be read, has the wrong shape or does not match its checksum is recomputed. Without a ``folder`` nothing is written and :meth:`iter_chunks` encodes on the fly.

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
    ) -> None:
        check_corpus(corpus)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of passages, got {chunk_size}.")
        self.model = model
        self.corpus = corpus
        self.chunk_size = int(chunk_size)
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.model_fingerprint = model_fingerprint(model)
        self.corpus_fingerprint = corpus_fingerprint(corpus)
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

    def _checksum_path(self, chunk: int) -> Path:
        return self._chunk_path(chunk).with_suffix(".sha256")

    def _load_chunk(self, chunk: int) -> np.ndarray | None:
        path = self._chunk_path(chunk)
        if not path.is_file():
            return None
        checksum = self._checksum_path(chunk)
        expected = checksum.read_text(encoding="utf-8").strip() if checksum.is_file() else None
        if expected != sha256_file(path):
            logger.warning("Embedding chunk %s does not match its checksum (changed on disk); recomputing it.", path)
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

    def _encode_chunk(self, chunk: int, bar: Any = None) -> np.ndarray:
        """The chunk's embeddings, encoded a few batches at a time so that ``bar`` (counting passages) moves while a
        chunk of thousands of passages is encoded. Launched on several processes, each encodes its share of the
        chunk and all get the whole chunk (:mod:`md2pr_st.distributed`)."""
        start = chunk * self.chunk_size
        texts = self.corpus[start : start + self.chunk_size]["text"]
        lo, hi = distributed.shard_bounds(len(texts)) if distributed.sharing() else (0, len(texts))
        step = self.batch_size * 4
        parts = []
        for offset in range(lo, hi, step):
            piece = texts[offset : min(offset + step, hi)]
            parts.append(encode(self.model, piece, "document", self.batch_size, False, across_processes=False))
            if bar is not None:
                bar.update(len(piece))
        if bar is not None and len(texts) > hi - lo:
            bar.update(len(texts) - (hi - lo))  # the other processes' shares
        self.encoded_chunks += 1
        mine = [np.concatenate(parts)] if parts else []
        return np.concatenate(distributed.gather_shards(mine) if distributed.sharing() else mine, axis=0)

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, embeddings)`` per chunk in corpus order, encoding (and saving) missing chunks.

        On several processes the main one decides which chunks are missing (so that all encode the same ones
        together) and alone writes them."""
        writes = self.path is not None and (distributed.is_main() or not distributed.sharing())
        if writes:  # only the writer creates folders: another process's mkdir would make the folder look not new
            new = not self.path.parent.is_dir() or not any(self.path.parent.iterdir())
            self.path.mkdir(parents=True, exist_ok=True)
            if new:  # a folder of its own: marked as md2pr's cache (never a folder holding other files)
                mark_output(self.path.parent, "embeddings")
            self._write_manifest()
        missing = None
        if distributed.sharing():
            missing = set(distributed.broadcast(self._missing_chunks() if distributed.is_main() else None))
        # One bar over passages (not chunks): it moves every few batches, cached chunks jump it forward.
        bar = tqdm(
            total=len(self.corpus),
            desc="Encoding corpus",
            unit="passage",
            disable=self.show_progress_bar is False or (distributed.sharing() and not distributed.is_main()),
        )
        with bar:
            for chunk in range(self.num_chunks):
                array = None
                if self.path is not None and (missing is None or chunk not in missing):
                    array = self._load_chunk(chunk)
                if array is None:
                    array = self._encode_chunk(chunk, bar)
                    if writes:
                        self._save_chunk(chunk, array)
                else:
                    bar.update(self._rows(chunk))
                self.dim = int(array.shape[1])
                yield chunk * self.chunk_size, array
        if distributed.sharing():
            distributed.barrier()  # the chunks are on disk for every process

    def _missing_chunks(self) -> list[int]:
        if self.path is None:
            return list(range(self.num_chunks))
        return [i for i in range(self.num_chunks) if self._load_chunk(i) is None]

    def _save_chunk(self, chunk: int, array: np.ndarray) -> None:
        """The chunk, then its checksum: a chunk without a matching checksum (a crash between the two, a file changed
        since) is recomputed, never trusted."""
        with atomic_path(self._chunk_path(chunk)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array)
            digest = sha256_file(tmp)
        with atomic_path(self._checksum_path(chunk)) as tmp:
            tmp.write_text(digest + "\n", encoding="utf-8")

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
        factory = resolve_factory(factory, len(self.corpus))
        index: faiss.Index | None = None
        pending: list[np.ndarray] = []
        storage: np.ndarray | None = None
        filled = 0
        for first, array in self.iter_chunks():
            array = np.ascontiguousarray(array, dtype=np.float32)
            if not np.isfinite(array).all():
                raise ValueError("Some corpus embeddings are NaN or infinite; check the model and the passages.")
            if index is None and factory == "Flat":
                index, storage = _flat_index_storage(len(self.corpus), array.shape[1])
            if storage is not None:
                storage[first : first + len(array)] = array
                filled += len(array)
                continue
            if index is None:
                index = faiss.index_factory(array.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
                if hasattr(index, "hnsw"):
                    index.hnsw.efConstruction = DEFAULT_HNSW_EF_CONSTRUCTION
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
        if storage is not None:
            if filled != len(storage):
                raise RuntimeError(f"The cache's chunks hold {filled} embeddings for {len(storage)} passages.")
            index.ntotal = len(storage)  # type: ignore[union-attr]
        if pending:  # a small corpus: train on all of it
            sample = np.concatenate(pending)
            index.train(sample)
            index.add(sample)
        assert index is not None
        out = FaissIndex(index, self.corpus["id"], self.model_fingerprint, self.corpus_fingerprint, factory)
        search_params.setdefault("ef_search", DEFAULT_HNSW_EF_SEARCH)  # as FaissIndex.build (faiss's own is 16)
        out.set_search_params(**search_params)
        return out


def _flat_index_storage(size: int, dim: int) -> tuple[faiss.Index, np.ndarray]:
    """An exact inner-product index with room for ``size`` vectors, and a ``(size, dim)`` float32 view of its
    storage to write them into (then set ``index.ntotal = size``).

    Adding chunk by chunk grows faiss's buffer by reallocation, which holds the old and the new buffer at once (a
    measured peak of 1.6x the vectors at 1M x 128); writing into storage sized once keeps one copy. An exact index
    stores each vector's float32 bytes as its code, so the view is the index's own data: it lives only as long as
    the index and only until anything is added to it (which may move the storage), hence private.
    """
    index = faiss.IndexFlatIP(dim)
    index.codes.resize(size * index.code_size)
    storage = faiss.rev_swig_ptr(index.codes.data(), size * index.code_size).view(np.float32).reshape(size, dim)
    return index, storage


def load_manifest(cache_path: str | Path) -> dict:
    """The manifest of a :class:`CorpusEmbeddingCache` folder."""
    return json.loads((Path(cache_path) / _MANIFEST).read_text(encoding="utf-8"))
