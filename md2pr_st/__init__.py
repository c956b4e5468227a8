"""md2pr-st: multi-level distillation (MD2PR) of cross-encoders into sentence-transformers dense retrievers.

The public API, importable from the package root::

    from md2pr_st import MD2PRLoss, FalseNegativeFilter, Teacher, RetrievalEvaluator, FaissIndex
    from md2pr_st import load_rag24, load_beir, mine_hard_negatives, run_pipeline

Names are imported on first use, so ``import md2pr_st`` stays cheap (the command line's help needs no torch).

Example:
    >>> import md2pr_st
    >>> md2pr_st.MD2PRLoss.__module__
    'md2pr_st.losses.md2pr'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from md2pr_st import _startup  # noqa: F401  (the md2pr command: Ctrl-C while it starts exits with 130)
from md2pr_st._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "MD2PRLoss": "md2pr_st.losses",
    "CachedMD2PRLoss": "md2pr_st.losses",
    "SentenceLevelDistillationLoss": "md2pr_st.losses",
    "WordLevelDistillationLoss": "md2pr_st.losses",
    "Teacher": "md2pr_st.teacher",
    "AttentionRecorder": "md2pr_st.teacher",
    "OfflineTeacher": "md2pr_st.teacher",
    "QrelsScorer": "md2pr_st.teacher",
    "train_teacher": "md2pr_st.teacher",
    "FalseNegativeFilter": "md2pr_st.false_negatives",
    "mine_hard_negatives": "md2pr_st.mining",
    "RetrievalData": "md2pr_st.data",
    "load_rag24": "md2pr_st.data",
    "load_beir": "md2pr_st.data",
    "load_splits": "md2pr_st.data",
    "training_pairs": "md2pr_st.data",
    "cross_validation_folds": "md2pr_st.data",
    "FaissIndex": "md2pr_st.index",
    "CorpusEmbeddingCache": "md2pr_st.index",
    "encode": "md2pr_st.index",
    "RetrievalEvaluator": "md2pr_st.evaluation",
    "evaluate_run": "md2pr_st.evaluation",
    "teacher_rerank": "md2pr_st.evaluation",
    "train_student": "md2pr_st.student",
    "run_pipeline": "md2pr_st.pipeline",
    "LossArguments": "md2pr_st.config",
    "PipelineArguments": "md2pr_st.config",
    "write_model_card": "md2pr_st.hub",
    "push_to_hub": "md2pr_st.hub",
}
__all__ = [
    "__version__",
    "MD2PRLoss",
    "CachedMD2PRLoss",
    "SentenceLevelDistillationLoss",
    "WordLevelDistillationLoss",
    "Teacher",
    "AttentionRecorder",
    "OfflineTeacher",
    "QrelsScorer",
    "train_teacher",
    "FalseNegativeFilter",
    "mine_hard_negatives",
    "RetrievalData",
    "load_rag24",
    "load_beir",
    "load_splits",
    "training_pairs",
    "cross_validation_folds",
    "FaissIndex",
    "CorpusEmbeddingCache",
    "encode",
    "RetrievalEvaluator",
    "evaluate_run",
    "teacher_rerank",
    "train_student",
    "run_pipeline",
    "LossArguments",
    "PipelineArguments",
    "write_model_card",
    "push_to_hub",
]

if TYPE_CHECKING:
    from md2pr_st.config import LossArguments, PipelineArguments
    from md2pr_st.data import (
        RetrievalData,
        cross_validation_folds,
        load_beir,
        load_rag24,
        load_splits,
        training_pairs,
    )
    from md2pr_st.evaluation import RetrievalEvaluator, evaluate_run, teacher_rerank
    from md2pr_st.false_negatives import FalseNegativeFilter
    from md2pr_st.hub import push_to_hub, write_model_card
    from md2pr_st.index import CorpusEmbeddingCache, FaissIndex, encode
    from md2pr_st.losses import (
        CachedMD2PRLoss,
        MD2PRLoss,
        SentenceLevelDistillationLoss,
        WordLevelDistillationLoss,
    )
    from md2pr_st.mining import mine_hard_negatives
    from md2pr_st.pipeline import run_pipeline
    from md2pr_st.student import train_student
    from md2pr_st.teacher import AttentionRecorder, OfflineTeacher, QrelsScorer, Teacher, train_teacher


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'md2pr_st' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
