"""Dynamic false-negative filtering of mined hard negatives (MD2PR, step 3 of each round).

A mined negative d of query q is a **false negative** when the teacher scores it about as high as the positive:
``t(q, d) >= theta_r(q)``. :class:`FalseNegativeFilter` teacher-scores every candidate of every row, flags false
negatives by one of four rules, drops them (optionally keeping them as extra positives) and refills each row from
its remaining candidates so the n-tuples stay rectangular (or, with ``action="mask"``, keeps them in place for
:class:`~md2pr_st.losses.MD2PRLoss` to mask out of L_c with the same margin), and writes the teacher logits
as the ``scores`` label column (positive first), ready for :class:`~md2pr_st.losses.SentenceLevelDistillationLoss` and
:class:`~md2pr_st.losses.MD2PRLoss`.

Rules (``t`` are teacher logits, ``d+`` the row's positive):

- ``dynamic`` (default): ``theta_r(q) = t(q, d+) - m_r`` with the margin re-estimated in every round r from the
  round's gaps ``G_r = {t(q, d+) - t(q, d) : every row, every candidate d}``::

      m_r = clip( Q_p(G_r), min_margin, max_margin )

  ``Q_p`` is the p-quantile with linear interpolation (numpy's default: sort G ascending as g_0..g_{N-1},
  h = (N - 1) p, Q_p = g_floor(h) + (h - floor(h)) (g_floor(h)+1 - g_floor(h))). Defaults: ``p = 0.1``,
  ``min_margin = 0`` (a candidate the teacher ranks at or above the positive is always flagged), no
  ``max_margin``. As the student improves, mined negatives get harder, the gaps shrink and m_r follows them.
- ``margin``: a fixed margin, ``theta(q) = t(q, d+) - m`` (the host's ``absolute_margin``; ``MD2PRLoss``'s
  ``false_negative_margin``).
- ``relative``: ``theta(q) = t(q, d+) - |t(q, d+)| * r`` (the host's ``relative_margin``, here on logits).
- ``absolute``: a fixed threshold on the teacher logit, ``theta(q) = tau``.

The dynamic margin is a statistic of the whole round, so filtering is a **two-pass** API: :meth:`fit` scores
every (query, positive) and (query, candidate) pair of the round's dataset and estimates m_r; then
``dataset.map(filter, batched=True, remove_columns=dataset.column_names)`` filters row by row. A
:class:`~md2pr_st.teacher.Teacher` caches scores by text hash, so the map pass does not run the teacher again.
:meth:`apply` does both. Without a teacher the filter reads the teacher scores from the input's ``scores`` column
(one logit per candidate, positive first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from md2pr_st.mining import negative_columns
from md2pr_st.utils import atomic_path, fingerprint, write_json

logger = logging.getLogger(__name__)

__all__ = ["FalseNegativeFilter", "RULES", "dynamic_margin"]

RULES = ("dynamic", "margin", "relative", "absolute")


def dynamic_margin(
    gaps: np.ndarray | Sequence[float],
    quantile: float = 0.1,
    min_margin: float | None = 0.0,
    max_margin: float | None = None,
) -> float:
    """The dynamic rule's margin ``m_r = clip(Q_p(G_r), min_margin, max_margin)`` over a round's gaps.

    Example:
        >>> # gaps 1..10: h = 9 * 0.1 = 0.9, Q = 1 + 0.9 * (2 - 1) = 1.9
        >>> round(dynamic_margin([float(g) for g in range(10, 0, -1)], quantile=0.1), 6)
        1.9
        >>> dynamic_margin([-3.0, -2.0, 5.0], quantile=0.1)  # clipped at min_margin = 0
        0.0
    """
    gaps = np.asarray(gaps, dtype=np.float64).reshape(-1)
    if gaps.size == 0:
        raise ValueError("The round has no candidates, so its dynamic margin is undefined.")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}.")
    margin = float(np.quantile(gaps, quantile))
    if min_margin is not None:
        margin = max(margin, float(min_margin))
    if max_margin is not None:
        margin = min(margin, float(max_margin))
    return margin


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return {"count": 0}
    q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "q05": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "q95": float(q[4]),
        "max": float(values.max()),
    }


class FalseNegativeFilter:
    def __init__(
        self,
        teacher: Any = None,
        rule: str = "dynamic",
        *,
        quantile: float = 0.1,
        min_margin: float | None = 0.0,
        max_margin: float | None = None,
        margin: float | None = None,
        relative_margin: float | None = None,
        threshold: float | None = None,
        num_negatives: int | None = None,
        keep_as_positives: bool = False,
        refill_order: str = "rank",
        action: str = "drop",
        query_column: str = "query",
        positive_column: str = "positive",
        scores_column: str = "scores",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        """
        Flag, drop and refill false negatives among mined candidates, and attach the teacher's logits.

        A candidate d of a row (q, d+, d_1, ..., d_K) is flagged when ``t(q, d) >= theta(q)`` (see the module
        docstring for the four rules and the dynamic margin ``m_r = clip(Q_p(G_r), min_margin, max_margin)`` over
        the round's gaps ``G_r = {t(q, d+) - t(q, d)}``). Flagged candidates are removed; the first
        ``num_negatives`` remaining candidates, in their input order (the mining rank), become ``negative_1`` ..
        ``negative_n``; a row with fewer than ``num_negatives`` remaining candidates is dropped (counted). The
        output columns are ``query, positive, negative_1..n, scores`` with ``scores = [t(q, d+), t(q, negative_1),
        ..., t(q, negative_n)]`` (logits, positive first). With ``keep_as_positives=True`` each flagged candidate
        also becomes a row ``(q, flagged, negative_1..n)`` of its own.

        Two passes per round: :meth:`fit` (scores the whole round, estimates m_r, starts a new round in the
        statistics) and then ``dataset.map(filter, batched=True, remove_columns=dataset.column_names)``, or
        :meth:`apply` for both. Run the map in one process (``num_proc=None``): the statistics are counted in
        this object.

        Args:
            teacher: a :class:`~md2pr_st.teacher.Teacher`, a ``CrossEncoder``, a Hub id / local folder, any object
                with ``score(pairs, batch_size=..., show_progress_bar=...) -> logits``, or ``None`` to read the
                input's ``scores`` column.
            rule: ``"dynamic"`` (default), ``"margin"``, ``"relative"`` or ``"absolute"``.
            quantile: p of the dynamic rule (default 0.1).
            min_margin, max_margin: clip of the dynamic margin (default ``[0, inf)``).
            margin: m of the ``margin`` rule.
            relative_margin: r of the ``relative`` rule.
            threshold: tau of the ``absolute`` rule.
            num_negatives: negatives kept per row (default: all candidate columns, so any flagged candidate drops
                its row; mine more candidates than you keep).
            keep_as_positives: add a row per flagged candidate with it as the positive.
            refill_order: which remaining candidates become the negatives: the first ones in input (mining rank)
                order (``"rank"``, default) or the highest teacher scores (``"teacher"``, as the host's
                ``mine_hard_negatives`` picks them after cross-encoder rescoring).
            action: ``"drop"`` (default) removes flagged candidates and refills the row; ``"mask"`` keeps the first
                ``num_negatives`` candidates, flagged or not, with their scores, for a loss that masks the flagged
                ones itself: :class:`~md2pr_st.losses.MD2PRLoss` with ``false_negative_margin`` = the round's
                margin (:attr:`margin_`) leaves them out of L_c's denominator and still distils their scores in
                L_s. Only the ``dynamic`` and ``margin`` rules, which the loss reproduces, can mask.
            query_column, positive_column: input column names; candidates are the ``negative_<i>`` columns.
            scores_column: the label column written (and read when ``teacher=None``).
            batch_size: teacher batch size.
            show_progress_bar: teacher progress bar in :meth:`fit`.

        Example:
            >>> from datasets import Dataset
            >>> rows = Dataset.from_dict({
            ...     "query": ["q1", "q2"], "positive": ["p1", "p2"],
            ...     "negative_1": ["dup1", "a2"], "negative_2": ["b1", "b2"], "negative_3": ["c1", "c2"],
            ...     "scores": [[5.0, 5.0, 1.0, 0.0], [4.0, 0.0, -1.0, -2.0]],  # teacher logits, positive first
            ... })
            >>> fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.1, num_negatives=2)
            >>> filtered = fn_filter.apply(rows)
            >>> fn_filter.margin_  # gaps 0, 4, 5, 4, 5, 6 -> Q_0.1 = 0 + 0.5 * (4 - 0) = 2.0
            2.0
            >>> filtered[0]
            {'query': 'q1', 'positive': 'p1', 'negative_1': 'b1', 'negative_2': 'c1', 'scores': [5.0, 1.0, 0.0]}
            >>> stats = fn_filter.statistics["rounds"][-1]
            >>> stats["flagged"], stats["dropped_rows"], stats["candidates_scored"]
            (1, 0, 6)
        """
        if rule not in RULES:
            raise ValueError(f"Unknown rule {rule!r}; choose one of {', '.join(RULES)}.")
        needs = {"margin": ("margin", margin), "relative": ("relative_margin", relative_margin)}
        needs["absolute"] = ("threshold", threshold)
        if rule in needs and needs[rule][1] is None:
            raise ValueError(f"rule={rule!r} needs {needs[rule][0]}=...; see FalseNegativeFilter's docstring.")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {quantile}.")
        if min_margin is not None and max_margin is not None and min_margin > max_margin:
            raise ValueError(f"min_margin ({min_margin}) must not exceed max_margin ({max_margin}).")
        if refill_order not in ("rank", "teacher"):
            raise ValueError(f"refill_order must be 'rank' or 'teacher', got {refill_order!r}.")
        if num_negatives is not None and num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {num_negatives}.")
        if action not in ("drop", "mask"):
            raise ValueError(f"action must be 'drop' or 'mask', got {action!r}.")
        if action == "mask" and rule not in ("dynamic", "margin"):
            raise ValueError(
                "action='mask' leaves the flagged candidates to MD2PRLoss's false_negative_margin, which expresses "
                f"the 'dynamic' and 'margin' rules only (got rule={rule!r})."
            )
        if action == "mask" and (keep_as_positives or refill_order != "rank"):
            raise ValueError(
                "action='mask' keeps the first num_negatives candidates in mining order, flagged or not: it adds no "
                "extra positive rows (keep_as_positives=False) and does not reorder them (refill_order='rank'); "
                "sorting by teacher score would keep exactly the flagged ones."
            )
        self.teacher = self._as_teacher(teacher, batch_size)
        self.rule = rule
        self.quantile = float(quantile)
        self.min_margin = min_margin
        self.max_margin = max_margin
        self.margin = margin
        self.relative_margin = relative_margin
        self.threshold = threshold
        self.num_negatives = num_negatives
        self.keep_as_positives = keep_as_positives
        self.refill_order = refill_order
        self.action = action
        self.query_column = query_column
        self.positive_column = positive_column
        self.scores_column = scores_column
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.margin_: float | None = margin if rule == "margin" else None
        self.rounds: list[dict[str, Any]] = []
        # round number -> (gaps, flags) of the rounds fitted by this object, for the histogram
        self._fitted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _as_teacher(teacher: Any, batch_size: int) -> Any:
        if teacher is None or hasattr(teacher, "score"):
            return teacher
        from md2pr_st.teacher import Teacher

        return Teacher(teacher, batch_size=batch_size)

    # -- configuration ----------------------------------------------------------------------------------------

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"rule": self.rule}
        if self.rule == "dynamic":
            config.update(quantile=self.quantile, min_margin=self.min_margin, max_margin=self.max_margin)
        elif self.rule == "margin":
            config["margin"] = self.margin
        elif self.rule == "relative":
            config["relative_margin"] = self.relative_margin
        else:
            config["threshold"] = self.threshold
        config.update(
            num_negatives=self.num_negatives,
            keep_as_positives=self.keep_as_positives,
            refill_order=self.refill_order,
            action=self.action,
        )
        config["teacher"] = getattr(self.teacher, "model_name", None) if self.teacher is not None else "scores column"
        return config

    # -- scoring ----------------------------------------------------------------------------------------------

    def _candidate_columns(self, columns: Sequence[str]) -> list[str]:
        missing = [c for c in (self.query_column, self.positive_column) if c not in columns]
        if missing:
            raise ValueError(
                f"FalseNegativeFilter needs the columns {self.query_column!r}, {self.positive_column!r} and "
                f"negative_1..negative_n; the input lacks {missing} (it has {list(columns)}). Pass "
                "query_column=/positive_column= or rename the columns."
            )
        candidates = negative_columns(columns)
        if not candidates:
            raise ValueError(
                f"The input has no candidate columns (negative_1, negative_2, ...): it has {list(columns)}. Mine "
                "candidates first (md2pr_st.mining.mine_hard_negatives) or rename them to negative_<i>."
            )
        if self.teacher is None and self.scores_column not in columns:
            raise ValueError(
                f"FalseNegativeFilter has no teacher and the input has no {self.scores_column!r} column of teacher "
                "scores. Pass teacher=... (a CrossEncoder or its path) or add the scores column."
            )
        if self.num_negatives is not None and self.num_negatives > len(candidates):
            raise ValueError(
                f"num_negatives={self.num_negatives} but the input has only {len(candidates)} candidate columns. "
                "Mine more candidates or lower num_negatives."
            )
        return candidates

    def score_batch(self, batch: dict[str, list]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Candidate column names, ``t(q, d+)`` of shape (R,) and ``t(q, d_k)`` of shape (R, K) for a batch."""
        columns = self._candidate_columns(list(batch))
        queries, positives = batch[self.query_column], batch[self.positive_column]
        rows = len(queries)
        for i in range(rows):
            if not isinstance(queries[i], str) or not queries[i].strip():
                raise ValueError(f"Row {i} of the batch has an empty or missing query.")
            if not isinstance(positives[i], str) or not positives[i].strip():
                raise ValueError(
                    f"Row {i} of the batch (query {queries[i][:60]!r}) has no positive ({positives[i]!r}). Every "
                    "row needs its positive: the thresholds are relative to it. Drop such rows first."
                )
            for c in columns:
                text = batch[c][i]
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(
                        f"Row {i} of the batch (query {queries[i][:60]!r}) has an empty candidate list entry: "
                        f"{c} = {text!r}. Every candidate column needs a passage text in every row; re-mine or drop "
                        "the row."
                    )
        if self.teacher is None:
            scores = np.asarray(batch[self.scores_column], dtype=np.float64)
            if scores.shape != (rows, len(columns) + 1):
                raise ValueError(
                    f"The {self.scores_column!r} column must hold {len(columns) + 1} teacher scores per row (the "
                    f"positive, then {len(columns)} candidates); got shape {scores.shape}."
                )
        else:
            pairs = [(q, p) for q, p in zip(queries, positives)]
            pairs += [(queries[i], batch[c][i]) for i in range(rows) for c in columns]
            flat = np.asarray(
                self.teacher.score(pairs, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar),
                dtype=np.float64,
            )
            scores = np.concatenate([flat[:rows, None], flat[rows:].reshape(rows, len(columns))], axis=1)
        bad = np.argwhere(~np.isfinite(scores))
        if len(bad):
            i, j = (int(x) for x in bad[0])
            where = self.positive_column if j == 0 else columns[j - 1]
            raise ValueError(
                f"The teacher gave {len(bad)} NaN or infinite scores, e.g. row {i}, {where} "
                f"(query {queries[i][:60]!r}). False negatives cannot be judged on NaN: check the teacher (weights, "
                "fp16 overflow) or the precomputed scores column."
            )
        return columns, scores[:, 0], scores[:, 1:]

    def thresholds(self, positive_scores: np.ndarray) -> np.ndarray:
        """``theta(q)`` per row for the current rule (for ``dynamic``, with the margin of the current round)."""
        positive_scores = np.asarray(positive_scores, dtype=np.float64)
        if self.rule == "dynamic":
            if self.margin_ is None:
                raise RuntimeError(
                    "The dynamic rule needs the round's margin: call fn_filter.fit(dataset) on the whole round "
                    "before dataset.map(fn_filter, ...), or use fn_filter.apply(dataset)."
                )
            return positive_scores - self.margin_
        if self.rule == "margin":
            return positive_scores - float(self.margin)
        if self.rule == "relative":
            return positive_scores - np.abs(positive_scores) * float(self.relative_margin)
        return np.full_like(positive_scores, float(self.threshold))

    def decide(self, batch: dict[str, list]) -> dict[str, Any]:
        """Scores, thresholds and flags of a batch, without filtering it or touching the statistics.

        Returns ``{"columns", "positive_scores" (R,), "candidate_scores" (R, K), "thresholds" (R,),
        "flags" (R, K)}`` with ``flags = candidate_scores >= thresholds[:, None]``.
        """
        columns, positive, candidates = self.score_batch(batch)
        thresholds = self.thresholds(positive)
        return {
            "columns": columns,
            "positive_scores": positive,
            "candidate_scores": candidates,
            "thresholds": thresholds,
            "flags": candidates >= thresholds[:, None],
        }

    # -- rounds -----------------------------------------------------------------------------------------------

    def fit(self, dataset: Dataset, batch_size: int = 1024) -> FalseNegativeFilter:
        """Start a new round: score all of ``dataset`` and (for ``dynamic``) estimate the round's margin m_r.

        The teacher scores go to its text-hash cache, so the following map pass reads them back.
        """
        if len(dataset) == 0:
            raise ValueError("The dataset is empty: a round needs rows to estimate its threshold from.")
        self._candidate_columns(dataset.column_names)
        positive, candidates = [], []
        if self.teacher is not None:  # one call, so that the teacher sorts all pairs by length
            _, p, c = self.score_batch(dataset[:])
            positive.append(p)
            candidates.append(c)
        else:
            for start in range(0, len(dataset), batch_size):
                _, p, c = self.score_batch(dataset[start : start + batch_size])
                positive.append(p)
                candidates.append(c)
        positive_scores, candidate_scores = np.concatenate(positive), np.concatenate(candidates)
        gaps = positive_scores[:, None] - candidate_scores
        if self.rule == "dynamic":
            self.margin_ = dynamic_margin(gaps, self.quantile, self.min_margin, self.max_margin)
        self._begin_round(gaps, candidate_scores >= self.thresholds(positive_scores)[:, None], positive_scores)
        return self

    def _begin_round(self, gaps: np.ndarray, flags: np.ndarray | None, positive_scores: np.ndarray | None) -> None:
        stats: dict[str, Any] = {
            "round": len(self.rounds) + 1,
            **self.get_config_dict(),
            "margin": self.margin_,
            "rows": 0,
            "candidates_scored": 0,
            "flagged": 0,
            "flagged_fraction": 0.0,
            "dropped_rows": 0,
            "refilled_rows": 0,
            "rows_out": 0,
            "extra_positive_rows": 0,
            "masked": 0,
            "fit_rows": int(gaps.shape[0]),
            "fit_flagged": int(flags.sum()) if flags is not None else None,
            "gaps": _summary(gaps),
            "thresholds": _summary(self.thresholds(positive_scores)) if positive_scores is not None else None,
        }
        self.rounds.append(stats)
        if flags is not None:
            self._fitted[stats["round"]] = (gaps.reshape(-1), flags.reshape(-1))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Filter one batch (for ``Dataset.map(batched=True, remove_columns=dataset.column_names)``)."""
        if not self.rounds:
            if self.rule == "dynamic":
                self.thresholds(np.zeros(1))  # raises the "call fit first" error
            self._begin_round(np.zeros((0, 0)), None, None)
        decision = self.decide(batch)
        columns, flags = decision["columns"], decision["flags"]
        positive, candidates = decision["positive_scores"], decision["candidate_scores"]
        n = self.num_negatives or len(columns)
        out: dict[str, list] = {self.query_column: [], self.positive_column: []}
        out.update({f"negative_{j}": [] for j in range(1, n + 1)})
        out[self.scores_column] = []
        stats = self.rounds[-1]
        queries, positives = batch[self.query_column], batch[self.positive_column]
        for i in range(len(queries)):
            stats["rows"] += 1
            stats["candidates_scored"] += len(columns)
            flagged = [k for k in range(len(columns)) if flags[i, k]]
            stats["flagged"] += len(flagged)
            kept = [k for k in range(len(columns)) if self.action == "mask" or not flags[i, k]]
            if self.refill_order == "teacher":
                kept = sorted(kept, key=lambda k: -candidates[i, k])
            kept = kept[:n]
            if len(kept) < n:
                stats["dropped_rows"] += 1
                continue
            if self.action == "mask":
                stats["masked"] += int(flags[i, kept].sum())
            elif flags[i, :n].any():  # a flagged candidate among the first n was replaced
                stats["refilled_rows"] += 1
            negatives = [batch[columns[k]][i] for k in kept]
            negative_scores = [float(candidates[i, k]) for k in kept]
            heads = [(positives[i], float(positive[i]))]
            if self.keep_as_positives:
                heads += [(batch[columns[k]][i], float(candidates[i, k])) for k in flagged]
                stats["extra_positive_rows"] += len(flagged)
            for text, score in heads:
                out[self.query_column].append(queries[i])
                out[self.positive_column].append(text)
                for j, negative in enumerate(negatives, 1):
                    out[f"negative_{j}"].append(negative)
                out[self.scores_column].append([score, *negative_scores])
                stats["rows_out"] += 1
        stats["flagged_fraction"] = (
            stats["flagged"] / stats["candidates_scored"] if stats["candidates_scored"] else 0.0
        )
        return out

    def apply(self, dataset: Dataset, fit: bool = True, batch_size: int = 1000) -> Dataset:
        """Fit a new round on ``dataset`` (unless ``fit=False``) and filter it with ``Dataset.map``."""
        if fit:
            self.fit(dataset)
        # The filter holds a model: give map an explicit fingerprint instead of letting it hash the weights, and
        # never read a cached result (the statistics are counted while mapping).
        new_fingerprint = fingerprint(
            [str(getattr(dataset, "_fingerprint", "")), repr(self.get_config_dict()), repr(self.margin_)]
            + [str(len(self.rounds))]
        )[:32]
        return dataset.map(
            self,
            batched=True,
            batch_size=batch_size,
            remove_columns=dataset.column_names,
            load_from_cache_file=False,
            new_fingerprint=new_fingerprint,
            desc="Filtering false negatives",
        )

    # -- statistics -------------------------------------------------------------------------------------------

    @property
    def statistics(self) -> dict[str, Any]:
        """``{"rule", "config", "rounds": [per-round counts, margin, gap and threshold summaries]}``."""
        return {"rule": self.rule, "config": self.get_config_dict(), "rounds": [dict(r) for r in self.rounds]}

    def save_statistics(self, path: str | Path) -> Path:
        """Write :attr:`statistics` as JSON, atomically."""
        return write_json(path, self.statistics)

    def load_statistics(self, path: str | Path) -> FalseNegativeFilter:
        """Continue the rounds saved by :meth:`save_statistics`: the next :meth:`fit` is round ``len(rounds) + 1``.

        Rounds are merged by their number (a saved round replaces one of the same number held here), so loading the
        cumulative files of rounds 1, 2, ... one after the other, as a resumed pipeline does, gives rounds 1, 2, ...
        once each. The margin of the last round becomes the current margin.
        """
        import json

        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        previous = saved.get("rounds") if isinstance(saved, dict) else None
        if not isinstance(previous, list) or not all(isinstance(r, dict) and "round" in r for r in previous):
            raise ValueError(f"{path} is not a FalseNegativeFilter statistics file (no 'rounds' list).")
        merged = {int(r["round"]): dict(r) for r in self.rounds}
        merged.update({int(r["round"]): dict(r) for r in previous})
        numbers = sorted(merged)
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{path}: the rounds {numbers} are not numbered 1..n; was it written by another run?")
        self.rounds = [merged[n] for n in numbers]
        if self.rule == "dynamic" and self.rounds and self.rounds[-1].get("margin") is not None:
            self.margin_ = float(self.rounds[-1]["margin"])
        return self

    def plot(self, path: str | Path, round: int = -1, bins: int = 60) -> Path:
        """A PNG histogram of the round's teacher score gaps ``t(q, d+) - t(q, d)``, flagged candidates in red and
        the margin m_r (dynamic / margin rules) as a vertical line."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.rounds:
            raise RuntimeError("No round yet: call fit(dataset) (or apply) before plotting.")
        stats = self.rounds[round]
        if stats["round"] not in self._fitted:
            raise RuntimeError(
                f"Round {stats['round']} was not fitted by this object (map without fit, or loaded from a file), so "
                "its gaps were not recorded: plot right after fit/apply."
            )
        gaps, flags = self._fitted[stats["round"]]
        fig, ax = plt.subplots(figsize=(7, 4))
        edges = np.histogram_bin_edges(gaps, bins=bins)
        ax.hist([gaps[~flags], gaps[flags]], bins=edges, stacked=True, color=["#4c72b0", "#c44e52"],
                label=[f"kept ({int((~flags).sum())})", f"flagged ({int(flags.sum())})"])  # fmt: skip
        if stats["margin"] is not None and math.isfinite(stats["margin"]):
            ax.axvline(stats["margin"], color="black", linestyle="--", label=f"m_r = {stats['margin']:.3f}")
        ax.set_xlabel("teacher gap t(q, d+) - t(q, d)  (teacher score units)")
        ax.set_ylabel("candidates")
        ax.set_title(f"Round {stats['round']}: {stats['rule']} rule, {stats['fit_rows']} rows")
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        return path
