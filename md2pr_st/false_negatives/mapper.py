"""The map step of false-negative filtering: a pure function of a batch and a round's fitted thresholds.

:class:`FalseNegativeMapper` holds no teacher and changes nothing while it maps, so ``Dataset.map`` can hash it for
its cache and copy it to ``num_proc`` worker processes. :class:`~md2pr_st.false_negatives.FalseNegativeFilter`
builds it from a round's statistics (:meth:`~md2pr_st.false_negatives.FalseNegativeFilter.fit`) and counts the
round's statistics with the same :meth:`FalseNegativeMapper.select`, so the counts are those of the map.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from md2pr_st.data import negative_columns
from md2pr_st.false_negatives.inputs import check_scores

__all__ = ["FalseNegativeMapper"]


@dataclasses.dataclass(frozen=True)
class FalseNegativeMapper:
    """Flag, drop or mask, and refill the candidates of a batch, for ``Dataset.map(batched=True)``.

    A candidate d of a row (q, d+, d_1, ..., d_K) with teacher scores ``t`` from the ``scores`` column (positive
    first) is flagged when it passes any of the criteria that are set::

        t(q, d) >= t(q, d+) - margin                   (margin)
        t(q, d) >= t(q, d+) - |t(q, d+)| * relative_margin    (relative_margin)
        t(q, d) >= threshold                           (threshold)

    i.e. ``t(q, d) >= theta(q)`` with ``theta(q)`` the smallest of the set right-hand sides (:meth:`thresholds`).
    ``action="drop"`` removes flagged candidates and keeps the first ``num_negatives`` of the rest, in input (mining
    rank) order or, with ``refill_order="teacher"``, by decreasing teacher score; a row with fewer left is dropped.
    ``action="mask"`` keeps the first ``num_negatives`` candidates, flagged or not, for a loss that masks them. The
    output has the columns ``query, positive, negative_1..n, scores`` with ``scores = [t(q, d+), t(q, negative_1),
    ..., t(q, negative_n)]``; with ``keep_as_positives`` each flagged candidate of a kept row also heads a row
    ``(q, flagged, negative_1..n)`` of its own.

    Args:
        num_negatives: negatives kept per row (None: all candidate columns).
        action, refill_order, keep_as_positives: as above.
        margin, relative_margin, threshold: the criteria (None: unused; all None flags nothing).
        query_column, positive_column, scores_column: column names; candidates are the ``negative_<i>`` columns.

    Example:
        >>> mapper = FalseNegativeMapper(num_negatives=1, margin=1.0)
        >>> batch = {"query": ["q"], "positive": ["p"], "negative_1": ["dup"], "negative_2": ["far"],
        ...          "scores": [[5.0, 4.5, 1.0]]}
        >>> mapper(batch)
        {'query': ['q'], 'positive': ['p'], 'negative_1': ['far'], 'scores': [[5.0, 1.0]]}
    """

    num_negatives: int | None = None
    action: str = "drop"
    refill_order: str = "rank"
    keep_as_positives: bool = False
    margin: float | None = None
    relative_margin: float | None = None
    threshold: float | None = None
    query_column: str = "query"
    positive_column: str = "positive"
    scores_column: str = "scores"

    def thresholds(self, positive_scores: np.ndarray) -> np.ndarray:
        """``theta(q)`` per row: the smallest of the set criteria's right-hand sides (+inf when none is set)."""
        positive = np.asarray(positive_scores, dtype=np.float64)
        theta = np.full_like(positive, np.inf)
        if self.margin is not None:
            theta = np.minimum(theta, positive - self.margin)
        if self.relative_margin is not None:
            theta = np.minimum(theta, positive - np.abs(positive) * self.relative_margin)
        if self.threshold is not None:
            theta = np.minimum(theta, self.threshold)
        return theta

    def flags(self, positive_scores: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
        """(R, K) booleans: ``t(q, d_k) >= theta(q)``."""
        return np.asarray(candidate_scores) >= self.thresholds(positive_scores)[:, None]

    def select(self, flags: np.ndarray, candidate_scores: np.ndarray) -> list[int] | None:
        """The candidate indices one row keeps as its negatives, in output order; None when the row is dropped."""
        n = self.num_negatives or len(flags)
        kept = [k for k in range(len(flags)) if self.action == "mask" or not flags[k]]
        if self.refill_order == "teacher":
            kept.sort(key=lambda k: -candidate_scores[k])  # stable: ties stay in rank order
        return kept[:n] if len(kept) >= n else None

    def count(self, positive_scores: np.ndarray, candidate_scores: np.ndarray) -> dict[str, Any]:
        """The counts of mapping rows with these scores: what :meth:`__call__` flags, drops, refills and writes."""
        flags = self.flags(positive_scores, candidate_scores)
        rows, candidates = flags.shape
        counts = dict(rows=rows, candidates_scored=rows * candidates, flagged=int(flags.sum()))
        counts["flagged_fraction"] = counts["flagged"] / counts["candidates_scored"] if flags.size else 0.0
        counts.update(dropped_rows=0, refilled_rows=0, rows_out=0, extra_positive_rows=0, masked=0)
        n = self.num_negatives or candidates
        for row_flags, row_scores in zip(flags, candidate_scores):
            kept = self.select(row_flags, row_scores)
            if kept is None:
                counts["dropped_rows"] += 1
                continue
            if self.action == "mask":
                counts["masked"] += int(row_flags[kept].sum())
            elif row_flags[:n].any():  # a flagged candidate among the first n was replaced
                counts["refilled_rows"] += 1
            extra = int(row_flags.sum()) if self.keep_as_positives else 0
            counts["extra_positive_rows"] += extra
            counts["rows_out"] += 1 + extra
        return counts

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Filter one batch (``Dataset.map(mapper, batched=True, remove_columns=dataset.column_names)``)."""
        columns = negative_columns(list(batch))
        if self.scores_column not in batch:
            raise ValueError(
                f"The batch has no {self.scores_column!r} column of teacher scores (it has {list(batch)}): score the "
                "round first with FalseNegativeFilter.score(dataset), or use FalseNegativeFilter.apply(dataset)."
            )
        queries, positives = batch[self.query_column], batch[self.positive_column]
        scores = check_scores(batch[self.scores_column], queries, columns, self.positive_column, self.scores_column)
        positive, candidates = scores[:, 0], scores[:, 1:]
        flags = self.flags(positive, candidates)
        n = self.num_negatives or len(columns)
        out: dict[str, list] = {self.query_column: [], self.positive_column: []}
        out.update({f"negative_{j}": [] for j in range(1, n + 1)})
        out[self.scores_column] = []
        for i in range(len(queries)):
            kept = self.select(flags[i], candidates[i])
            if kept is None:
                continue
            negatives = [batch[columns[k]][i] for k in kept]
            negative_scores = [float(candidates[i, k]) for k in kept]
            heads = [(positives[i], float(positive[i]))]
            if self.keep_as_positives:
                heads += [(batch[columns[k]][i], float(candidates[i, k])) for k in np.flatnonzero(flags[i])]
            for text, score in heads:
                out[self.query_column].append(queries[i])
                out[self.positive_column].append(text)
                for j, negative in enumerate(negatives, 1):
                    out[f"negative_{j}"].append(negative)
                out[self.scores_column].append([score, *negative_scores])
        return out
