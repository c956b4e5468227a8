"""What a filtered round leaves to the loss: the margin and threshold that mask its flagged candidates in L_c.

A round filtered with ``action="mask"`` keeps its flagged candidates in the rows (the sentence level still learns
their order); :class:`~md2pr_st.losses.MD2PRLoss` leaves them out of the contrastive loss's denominator with the
same criteria the filter flagged them with, ``t(q, d) >= t(q, d+) - margin`` or ``t(q, d) >= threshold``. A round
filtered with ``action="drop"`` removed them: the loss masks nothing. :class:`FalseNegativeMasking` is that rule,
read from a round's statistics (:meth:`~md2pr_st.false_negatives.FalseNegativeFilter.masking`), so that the
pipeline and ``md2pr train`` give the loss the same criteria.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["FalseNegativeMasking"]


@dataclasses.dataclass(frozen=True)
class FalseNegativeMasking:
    """The ``false_negative_margin`` and ``false_negative_threshold`` of :class:`~md2pr_st.losses.MD2PRLoss` (None:
    that criterion is unused).

    Example:
        >>> masking = FalseNegativeMasking.of_round({"action": "mask", "margin": 1.0, "threshold": None})
        >>> masking.loss_kwargs()
        {'false_negative_margin': 1.0, 'false_negative_threshold': None}
        >>> masking.describe()
        'margin 1'
        >>> FalseNegativeMasking.of_round({"action": "drop", "margin": 1.0}).active
        False
    """

    margin: float | None = None
    threshold: float | None = None

    @classmethod
    def of_round(cls, stats: Mapping[str, Any]) -> FalseNegativeMasking:
        """The masking a round's statistics call for: its margin and threshold when it was filtered with
        ``action="mask"``, none when its flagged candidates were dropped (or it has no action)."""
        if stats.get("action") != "mask":
            return cls()
        return cls(stats.get("margin"), stats.get("threshold"))

    @property
    def active(self) -> bool:
        """Whether any candidate can be masked."""
        return self.margin is not None or self.threshold is not None

    def loss_kwargs(self) -> dict[str, float | None]:
        """The keyword arguments of :class:`~md2pr_st.losses.MD2PRLoss` and
        :func:`~md2pr_st.student.train_student`."""
        return {"false_negative_margin": self.margin, "false_negative_threshold": self.threshold}

    def describe(self) -> str:
        """The criteria in words (``"margin 1 and threshold 2.5"``), empty when none is set."""
        criteria = (("margin", self.margin), ("threshold", self.threshold))
        return " and ".join(f"{name} {value:g}" for name, value in criteria if value is not None)
