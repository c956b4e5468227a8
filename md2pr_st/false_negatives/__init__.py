"""Dynamic false-negative filtering of mined hard negatives (MD2PR, step 3 of each round).

A mined negative d of query q is a **false negative** when the teacher scores it about as high as a positive:
``t(q, d) >= theta_r(q)``, with theta_r re-estimated from the teacher scores of every round r.
:class:`FalseNegativeFilter` runs a round in three steps, each usable alone:

1. :meth:`~FalseNegativeFilter.score` writes the teacher's scores into the ``scores`` column (positive first);
2. :meth:`~FalseNegativeFilter.fit` estimates the round's threshold from all of them and counts the round's
   statistics (flagged candidates, dropped and refilled rows, rows out, masked candidates);
3. ``dataset.map(fn_filter.mapper(), batched=True, remove_columns=dataset.column_names)`` filters: the
   :class:`FalseNegativeMapper` is a pure, picklable function of the batch and the fitted round, so the map is
   cached by ``datasets`` and runs with ``num_proc``.

:meth:`~FalseNegativeFilter.apply` does all three. The rules, and the modules that compute them:

- ``rules``: the per-round estimates, each with its formula (:func:`dynamic_margin`, :func:`positives_threshold`,
  :func:`mixture_threshold`);
- ``mapper``: the flag criteria, the drop / mask / refill step (:class:`FalseNegativeMapper`);
- ``filter``: scoring, fitting, statistics and the gap histogram (:class:`FalseNegativeFilter`);
- ``masking``: what a round leaves to the loss, its margin and threshold (:class:`FalseNegativeMasking`).

Example:
    >>> from md2pr_st.false_negatives import RULES
    >>> RULES
    ('dynamic', 'margin', 'relative', 'absolute', 'positives', 'mixture', 'positives_mixture')
"""

from __future__ import annotations

from md2pr_st.false_negatives.filter import FalseNegativeFilter
from md2pr_st.false_negatives.mapper import FalseNegativeMapper
from md2pr_st.false_negatives.masking import FalseNegativeMasking
from md2pr_st.false_negatives.rules import (
    ADAPTIVE_RULES,
    MASKABLE_RULES,
    RULES,
    GaussianMixture,
    dynamic_margin,
    fit_gaussian_mixture,
    mixture_threshold,
    positives_threshold,
)

__all__ = [
    "ADAPTIVE_RULES",
    "MASKABLE_RULES",
    "RULES",
    "FalseNegativeFilter",
    "FalseNegativeMapper",
    "FalseNegativeMasking",
    "GaussianMixture",
    "dynamic_margin",
    "fit_gaussian_mixture",
    "mixture_threshold",
    "positives_threshold",
]
