"""A loss weight that changes over training (e.g. the word level's ``beta``), as a trainer callback."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from md2pr_st.config import SCHEDULES
from md2pr_st.validation import check_choice

__all__ = ["SCHEDULES", "LossWeightSchedule"]


class LossWeightSchedule(TrainerCallback):
    def __init__(self, loss: Any, name: str = "beta", schedule: str = "warmup", fraction: float = 0.5) -> None:
        """
        Sets ``loss.<name>`` before every optimizer step from the training progress ``p = step / max_steps`` and
        the weight ``w`` the loss was built with::

            constant:  w
            warmup:    w * min(1, p / fraction)                    (0 at the start, w from p = fraction on)
            decay:     w * min(1, (1 - p) / fraction)              (w until p = 1 - fraction, then down to 0)

        A warm-up lets the contrastive and sentence levels settle before the word level pulls on the token states;
        a decay keeps the word level's early shaping and leaves the end of training to the ranking losses.

        Args:
            loss: the loss object (e.g. :class:`~md2pr_st.losses.MD2PRLoss`), built with the full weight.
            name: the attribute to schedule (``"beta"``, or ``"alpha"``).
            schedule: ``"constant"``, ``"warmup"`` or ``"decay"``.
            fraction: the share of training the ramp takes, in (0, 1].

        Example:
            >>> from types import SimpleNamespace
            >>> loss = SimpleNamespace(beta=0.3)
            >>> schedule = LossWeightSchedule(loss, "beta", "warmup", fraction=0.5)
            >>> for step in (0, 25, 50, 99):
            ...     schedule.on_step_begin(None, SimpleNamespace(global_step=step, max_steps=100), None)
            ...     print(round(loss.beta, 3))
            0.0
            0.15
            0.3
            0.3
        """
        check_choice("schedule", schedule, SCHEDULES)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}.")
        if not hasattr(loss, name):
            raise ValueError(f"The loss {type(loss).__name__} has no weight {name!r} to schedule.")
        self.loss, self.name, self.schedule, self.fraction = loss, name, schedule, fraction
        self.weight = float(getattr(loss, name))

    def value(self, progress: float) -> float:
        """The weight at ``progress`` in [0, 1]."""
        if self.schedule == "warmup":
            return self.weight * min(1.0, progress / self.fraction)
        if self.schedule == "decay":
            return self.weight * min(1.0, max(0.0, 1.0 - progress) / self.fraction)
        return self.weight

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        progress = state.global_step / state.max_steps if state.max_steps else 0.0
        setattr(self.loss, self.name, self.value(progress))

    def get_config_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule, "fraction": self.fraction, "weight": self.weight}
