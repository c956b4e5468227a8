"""Retrieval data in: TREC RAG 2024 (from the ``ir-axioms==1.2.5`` sdist) and any BEIR-layout folder.

Every loader returns a :class:`RetrievalData`: a corpus and queries as :class:`datasets.Dataset` (columns ``id``,
``text``) and graded qrels as ``{query_id: {doc_id: grade}}``.

- ``retrieval_data.py``: :class:`RetrievalData`, its checks and its content fingerprint
- ``rag24.py``: TREC RAG 2024 (download, parse, cache, the train / dev / test topic split)
- ``beir.py``: the BEIR layout
- ``splits.py``: loading by name, the three splits, cross-validation folds
- ``pairs.py``: (query, positive) training pairs from the qrels, the checks of training rows
"""

from __future__ import annotations

from md2pr_st.data.beir import load_beir, load_corpus
from md2pr_st.data.pairs import (
    check_training_rows,
    load_rows,
    negative_columns,
    positives_per_query,
    training_pairs,
)
from md2pr_st.data.rag24 import DEFAULT_SPLIT_SEED, default_cache_dir, load_rag24, split_topics
from md2pr_st.data.retrieval_data import (
    RetrievalData,
    corpus_fingerprint,
    dataset_fingerprint,
    validate_retrieval_data,
)
from md2pr_st.data.splits import SPLITS, cross_validation_folds, load_retrieval_data, load_splits

__all__ = [
    "DEFAULT_SPLIT_SEED",
    "SPLITS",
    "RetrievalData",
    "check_training_rows",
    "corpus_fingerprint",
    "cross_validation_folds",
    "dataset_fingerprint",
    "default_cache_dir",
    "load_beir",
    "load_corpus",
    "load_rag24",
    "load_retrieval_data",
    "load_rows",
    "load_splits",
    "negative_columns",
    "positives_per_query",
    "split_topics",
    "training_pairs",
    "validate_retrieval_data",
]
