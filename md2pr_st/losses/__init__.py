"""The MD2PR losses, one per file, for ``SentenceTransformerTrainer``.

- :class:`SentenceLevelDistillationLoss` (``sentence_level_distillation.py``): listwise KL on teacher scores.
- :class:`WordLevelDistillationLoss` (``word_level_distillation.py``): student token interactions vs teacher attention.
- :class:`MD2PRLoss` (``md2pr.py``): contrastive with false-negative masking + alpha * sentence + beta * word level.
- :class:`CachedMD2PRLoss` (``cached_md2pr.py``): MD2PRLoss with GradCache, for large batches.
- :class:`LossWeightSchedule` (``weight_schedule.py``): a trainer callback that warms up or decays a weight (beta).
"""

from __future__ import annotations

from md2pr_st.losses.cached_md2pr import CachedMD2PRLoss
from md2pr_st.losses.md2pr import MD2PRLoss
from md2pr_st.losses.sentence_level_distillation import SentenceLevelDistillationLoss
from md2pr_st.losses.weight_schedule import LossWeightSchedule
from md2pr_st.losses.word_level_distillation import WordLevelDistillationLoss

__all__ = [
    "CachedMD2PRLoss",
    "LossWeightSchedule",
    "MD2PRLoss",
    "SentenceLevelDistillationLoss",
    "WordLevelDistillationLoss",
]
