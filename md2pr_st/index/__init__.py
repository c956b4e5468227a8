"""Dense retrieval with FAISS: encode a corpus with any SentenceTransformer, index it, search top-k.

- ``encoding.py``: :func:`encode` (queries and documents through the model's prompts and ``Router`` towers)
- ``faiss_index.py``: :class:`FaissIndex` (any ``faiss.index_factory`` string, saved with fingerprints)
- ``embedding_cache.py``: :class:`CorpusEmbeddingCache` (chunked, on-disk, resumable corpus embeddings)
"""

from __future__ import annotations

from md2pr_st.index.embedding_cache import CorpusEmbeddingCache, check_corpus, load_manifest
from md2pr_st.index.encoding import encode
from md2pr_st.index.faiss_index import (
    AUTO_HNSW_MIN_SIZE,
    DEFAULT_HNSW_EF_CONSTRUCTION,
    DEFAULT_HNSW_EF_SEARCH,
    FaissIndex,
    IndexMismatchError,
    resolve_factory,
    retrieve,
)

__all__ = [
    "AUTO_HNSW_MIN_SIZE",
    "DEFAULT_HNSW_EF_CONSTRUCTION",
    "DEFAULT_HNSW_EF_SEARCH",
    "CorpusEmbeddingCache",
    "FaissIndex",
    "IndexMismatchError",
    "check_corpus",
    "encode",
    "load_manifest",
    "resolve_factory",
    "retrieve",
]
