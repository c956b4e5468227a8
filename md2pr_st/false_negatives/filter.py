"""The false-negative filter of a round: teacher scores -> the round's threshold and statistics -> a pure mapper."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from md2pr_st.config import ADAPTIVE_RULES, DEFAULT_QUANTILE, FILTER_ACTIONS, MASKABLE_RULES, RULES
from md2pr_st.data import negative_columns
from md2pr_st.false_negatives.inputs import candidate_columns, check_scores, check_texts
from md2pr_st.false_negatives.mapper import FalseNegativeMapper
from md2pr_st.false_negatives.masking import FalseNegativeMasking
from md2pr_st.false_negatives.rules import dynamic_margin, mixture_threshold, positives_threshold
from md2pr_st.plots import plot_filter_gaps
from md2pr_st.teacher import Teacher
from md2pr_st.teacher.scoring import score_candidates
from md2pr_st.utils import write_json
from md2pr_st.validation import check_choice, check_margin_clip, check_range

__all__ = ["FalseNegativeFilter"]


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
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
    """Flag false negatives among mined candidates by the round's teacher scores, drop (or mask) them, refill each
    row, and attach the teacher's scores as the ``scores`` label column (positive first).

    A round has three steps, each usable alone: :meth:`score` writes ``t(q, d+), t(q, d_1), ..., t(q, d_K)``
    into the ``scores`` column (one teacher call for the whole round); :meth:`fit` estimates the round's
    threshold from those scores and counts everything the map will do (flagged, dropped and refilled rows, rows
    out, masked candidates) into a new round of :attr:`statistics`; :meth:`mapper` is the fitted, picklable map
    function (no teacher, no state changed while mapping), so ``Dataset.map`` caches its result and runs it with
    ``num_proc``. :meth:`apply` does all three.

    Rules (the formulas are in the docstrings of the functions that compute them):

    - ``positives`` (default, p = 0.5): ``t(q, d) >= theta_r``, theta_r a quantile of the round's positives' scores
      (:func:`~md2pr_st.false_negatives.positives_threshold`): a candidate the teacher scores like a typical positive
      is a false negative; the flagged share follows the candidates. Chosen on RAG24 dev topics, where it found
      false negatives (UMBRELA grade >= 2) with F1 0.67 against 0.57 for ``dynamic`` (BENCHMARKS.md).
    - ``dynamic``: ``t(q, d) >= t(q, d+) - m_r``, m_r a quantile of the round's gaps
      (:func:`~md2pr_st.false_negatives.dynamic_margin`); flags a share p of the candidates every round.
    - ``mixture`` / ``positives_mixture``: ``t(q, d) >= theta_r``, theta_r where the high component of a
      two-component Gaussian mixture fitted to the round's candidate scores becomes the likelier one; for
      ``positives_mixture`` the high component is the positives' score distribution
      (:func:`~md2pr_st.false_negatives.mixture_threshold`).
    - ``margin``, ``relative``, ``absolute``: fixed criteria (:class:`~md2pr_st.false_negatives.FalseNegativeMapper`).

    ``positives``, ``mixture`` and ``positives_mixture`` also flag ``t(q, d) >= t(q, d+) - min_margin`` (with
    the default 0: a candidate the teacher ranks at or above the positive); ``min_margin=None`` turns this off.

    Args:
        teacher: a :class:`~md2pr_st.teacher.Teacher`, a :class:`~md2pr_st.teacher.QrelsScorer`, a
            ``CrossEncoder``, a Hub id / local folder, any object with ``score(pairs, batch_size=...,
            show_progress_bar=...) -> scores``, or ``None`` to read the input's ``scores`` column.
        rule: one of :data:`~md2pr_st.false_negatives.RULES` (see above).
        quantile: p of ``dynamic`` (default 0.1) and ``positives`` (default 0.5).
        min_margin, max_margin: clip of the dynamic margin (default ``[0, inf)``); ``min_margin`` is also the
            ranked-above-the-positive criterion of the other adaptive rules.
        margin: m of the ``margin`` rule.
        relative_margin: r of the ``relative`` rule.
        threshold: tau of the ``absolute`` rule.
        num_negatives: negatives kept per row (default: all candidate columns, so any flagged candidate drops
            its row; mine more candidates than you keep).
        keep_as_positives: add a row per flagged candidate with it as the positive.
        refill_order: which remaining candidates become the negatives: the first ones in input (mining rank)
            order (``"rank"``, default) or the highest teacher scores (``"teacher"``).
        action: ``"mask"`` (default) keeps the first ``num_negatives`` candidates, flagged or not, with their
            scores, for :class:`~md2pr_st.losses.MD2PRLoss` with ``false_negative_margin`` = the round's margin
            (:attr:`margin_`) and ``false_negative_threshold`` = its threshold (:attr:`threshold_`) to leave out of
            L_c while L_s still learns their order (every rule but ``relative`` can mask); ``"drop"`` removes
            flagged candidates and refills the row from the others.
        query_column, positive_column: input column names; candidates are the ``negative_<i>`` columns.
        scores_column: the label column written (and read when ``teacher=None``).
        batch_size: teacher batch size.
        show_progress_bar: teacher progress bar in :meth:`score`.

    Example:
        >>> from datasets import Dataset
        >>> rows = Dataset.from_dict({
        ...     "query": ["q1", "q2"], "positive": ["p1", "p2"],
        ...     "negative_1": ["dup1", "a2"], "negative_2": ["b1", "b2"], "negative_3": ["c1", "c2"],
        ...     "scores": [[5.0, 5.0, 1.0, 0.0], [4.0, 0.0, -1.0, -2.0]],  # teacher logits, positive first
        ... })
        >>> fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.1, num_negatives=2, action="drop")
        >>> filtered = fn_filter.apply(rows)
        >>> fn_filter.margin_  # gaps 0, 4, 5, 4, 5, 6 -> Q_0.1 = 0 + 0.5 * (4 - 0) = 2.0
        2.0
        >>> filtered[0]
        {'query': 'q1', 'positive': 'p1', 'negative_1': 'b1', 'negative_2': 'c1', 'scores': [5.0, 1.0, 0.0]}
        >>> stats = fn_filter.statistics["rounds"][-1]
        >>> stats["flagged"], stats["dropped_rows"], stats["candidates_scored"]
        (1, 0, 6)
        >>> positives = FalseNegativeFilter(rule="positives", quantile=0.5, num_negatives=2).fit(rows)
        >>> positives.threshold_, positives.statistics["rounds"][-1]["flagged"]  # median positive: 4.5
        (4.5, 1)
    """

    def __init__(
        self,
        teacher: Any = None,
        rule: str = "positives",
        *,
        quantile: float | None = None,
        min_margin: float | None = 0.0,
        max_margin: float | None = None,
        margin: float | None = None,
        relative_margin: float | None = None,
        threshold: float | None = None,
        num_negatives: int | None = None,
        keep_as_positives: bool = False,
        refill_order: str = "rank",
        action: str = "mask",
        query_column: str = "query",
        positive_column: str = "positive",
        scores_column: str = "scores",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        self.rule = rule
        self.quantile = float(quantile if quantile is not None else DEFAULT_QUANTILE.get(rule, 0.1))
        self.min_margin, self.max_margin = min_margin, max_margin
        self.margin, self.relative_margin, self.threshold = margin, relative_margin, threshold
        self.num_negatives = num_negatives
        self.keep_as_positives, self.refill_order, self.action = keep_as_positives, refill_order, action
        self._check_options()
        self.teacher = self._as_teacher(teacher, batch_size)
        self.query_column, self.positive_column, self.scores_column = query_column, positive_column, scores_column
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.rounds: list[dict[str, Any]] = []
        self._state: FalseNegativeMapper | None = None  # the last fitted (or loaded) round's criteria
        # round number -> (gaps, flags) of the rounds fitted by this object, for the histogram
        self._fitted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _check_options(self) -> None:
        rule, action = self.rule, self.action
        if rule not in RULES:
            raise ValueError(f"Unknown rule {rule!r}; choose one of {', '.join(RULES)}.")
        needs = {"margin": ("margin", self.margin), "relative": ("relative_margin", self.relative_margin)}
        needs["absolute"] = ("threshold", self.threshold)
        if rule in needs and needs[rule][1] is None:
            raise ValueError(f"rule={rule!r} needs {needs[rule][0]}=...; see FalseNegativeFilter's docstring.")
        numbers = {"quantile": self.quantile, "min_margin": self.min_margin, "max_margin": self.max_margin}
        numbers.update(margin=self.margin, relative_margin=self.relative_margin, threshold=self.threshold)
        for name, value in {**numbers, "num_negatives": self.num_negatives}.items():
            check_range(name, value)  # NaN compares false: it would flag nothing
        check_margin_clip(self.min_margin, self.max_margin)
        check_choice("refill_order", self.refill_order, ("rank", "teacher"), quoted=True)
        check_choice("action", action, sorted(FILTER_ACTIONS), quoted=True)
        if action == "mask" and rule not in MASKABLE_RULES:
            raise ValueError(
                "action='mask' leaves the flagged candidates to MD2PRLoss's false_negative_margin and "
                f"false_negative_threshold, which cannot express rule={rule!r} (a threshold relative to |t(q, d+)|). "
                f"Use action='drop' with this rule, or one of {', '.join(MASKABLE_RULES)} to mask."
            )
        if action == "mask" and (self.keep_as_positives or self.refill_order != "rank"):
            raise ValueError(
                "action='mask' keeps the first num_negatives candidates in mining order, flagged or not: it adds no "
                "extra positive rows (keep_as_positives=False) and does not reorder them (refill_order='rank'); "
                "sorting by teacher score would keep exactly the flagged ones."
            )

    @property
    def _needs(self) -> dict[str, Any]:
        scores_column = self.scores_column if self.teacher is None else None
        return {"scores_column": scores_column, "num_negatives": self.num_negatives}

    @staticmethod
    def _as_teacher(teacher: Any, batch_size: int) -> Any:
        if teacher is None or hasattr(teacher, "score"):
            return teacher
        return Teacher(teacher, batch_size=batch_size)

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"rule": self.rule}
        if self.rule in DEFAULT_QUANTILE:
            config["quantile"] = self.quantile
        if self.rule in ADAPTIVE_RULES:
            config["min_margin"] = self.min_margin
        if self.rule == "dynamic":
            config["max_margin"] = self.max_margin
        fixed = {"margin": "margin", "relative": "relative_margin", "absolute": "threshold"}
        if self.rule in fixed:
            config[fixed[self.rule]] = getattr(self, fixed[self.rule])
        config.update(
            num_negatives=self.num_negatives,
            keep_as_positives=self.keep_as_positives,
            refill_order=self.refill_order,
            action=self.action,
        )
        config["teacher"] = getattr(self.teacher, "model_name", None) if self.teacher is not None else "scores column"
        return config

    # -- scoring ----------------------------------------------------------------------------------------------

    def _scores(self, table: Mapping[str, Sequence]) -> tuple[list[str], np.ndarray]:
        """Candidate columns and the (rows, 1 + K) teacher scores of a table (a batch or a whole dataset's
        columns): from the teacher when there is one (one call, via ``score_candidates``), else from the
        ``scores`` column."""
        columns = candidate_columns(list(table), self.query_column, self.positive_column, **self._needs)
        check_texts(table, columns, self.query_column, self.positive_column)
        queries = list(table[self.query_column])
        if self.teacher is None:
            scores = table[self.scores_column]
        else:
            lists = [[p, *(table[c][i] for c in columns)] for i, p in enumerate(table[self.positive_column])]
            scores = score_candidates(
                self.teacher, queries, lists, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar
            )
        return columns, check_scores(scores, queries, columns, self.positive_column, self.scores_column)

    def score(self, dataset: Dataset) -> Dataset:
        """``dataset`` with the teacher's scores of every row in its ``scores`` column: ``[t(q, d+), t(q, d_1),
        ..., t(q, d_K)]`` (replacing any such column). Without a teacher, the ``scores`` column is checked and
        ``dataset`` returned as it is."""
        if len(dataset) == 0:
            raise ValueError("The dataset is empty: a round needs rows to estimate its threshold from.")
        needed = [c for c in dataset.column_names if c in (self.query_column, self.positive_column)]
        needed += negative_columns(dataset.column_names)
        if self.teacher is None and self.scores_column in dataset.column_names:
            needed.append(self.scores_column)
        _, scores = self._scores({c: list(dataset[c]) for c in needed})
        if self.teacher is None:
            return dataset
        if self.scores_column in dataset.column_names:
            dataset = dataset.remove_columns(self.scores_column)
        return dataset.add_column(self.scores_column, scores.tolist())

    # -- rounds -----------------------------------------------------------------------------------------------

    def _mapper(self, **criteria: float | None) -> FalseNegativeMapper:
        return FalseNegativeMapper(
            num_negatives=self.num_negatives,
            action=self.action,
            refill_order=self.refill_order,
            keep_as_positives=self.keep_as_positives,
            query_column=self.query_column,
            positive_column=self.positive_column,
            scores_column=self.scores_column,
            **criteria,
        )

    def _fixed_mapper(self) -> FalseNegativeMapper:
        criterion = {"margin": "margin", "relative": "relative_margin", "absolute": "threshold"}[self.rule]
        return self._mapper(**{criterion: getattr(self, criterion)})

    def _estimate(self, positive: np.ndarray, candidates: np.ndarray) -> tuple[FalseNegativeMapper, dict]:
        """The round's mapper for this rule from the round's scores, and what else the estimate found."""
        rule, extra = self.rule, {}
        if rule == "dynamic":
            gaps = positive[:, None] - candidates
            return self._mapper(margin=dynamic_margin(gaps, self.quantile, self.min_margin, self.max_margin)), extra
        if rule in ("margin", "relative", "absolute"):
            return self._fixed_mapper(), extra
        if rule == "positives":
            theta = positives_threshold(positive, self.quantile)
        else:
            theta, mixture = mixture_threshold(candidates, positive if rule == "positives_mixture" else None)
            extra["mixture"] = mixture.to_dict() if mixture is not None else None
        return self._mapper(threshold=theta if math.isfinite(theta) else None, margin=self.min_margin), extra

    def fit(self, dataset: Dataset) -> FalseNegativeFilter:
        """Start a new round: score ``dataset`` (with the teacher, if any), estimate the round's threshold and
        count the round's statistics (what :meth:`mapper` will flag, drop, refill and write for it)."""
        self._fit_scored(self.score(dataset))
        return self

    def _fit_scored(self, scored: Dataset) -> None:
        columns = candidate_columns(scored.column_names, self.query_column, self.positive_column, **self._needs)
        queries = list(scored[self.query_column])
        scores = check_scores(scored[self.scores_column], queries, columns, self.positive_column, self.scores_column)
        positive, candidates = scores[:, 0], scores[:, 1:]
        mapper, extra = self._estimate(positive, candidates)
        gaps = positive[:, None] - candidates
        stats: dict[str, Any] = {
            "round": len(self.rounds) + 1,
            **self.get_config_dict(),
            "margin": mapper.margin,
            "threshold": mapper.threshold,
            **mapper.count(positive, candidates),
            "gaps": _summary(gaps),
            "thresholds": _summary(mapper.thresholds(positive)),
            "positive_scores": _summary(positive),
            "candidate_scores": _summary(candidates),
            **extra,
        }
        self.rounds.append(stats)
        self._state = mapper
        self._fitted[stats["round"]] = (gaps.reshape(-1), mapper.flags(positive, candidates).reshape(-1))

    def mapper(self) -> FalseNegativeMapper:
        """The map function of the current round: ``scored.map(fn_filter.mapper(), batched=True,
        remove_columns=scored.column_names)`` on the output of :meth:`score`. The fixed rules need no :meth:`fit`."""
        if self._state is not None:
            return self._state
        if self.rule not in ADAPTIVE_RULES:
            return self._fixed_mapper()
        raise RuntimeError(
            f"The {self.rule} rule needs the round's threshold: call fn_filter.fit(dataset) on the whole round "
            "before mapping with fn_filter.mapper(), or use fn_filter.apply(dataset)."
        )

    @property
    def margin_(self) -> float | None:
        """The current round's margin m (``t(q, d) >= t(q, d+) - m`` flags), or None."""
        return self._state.margin if self._state is not None else (self.margin if self.rule == "margin" else None)

    @property
    def threshold_(self) -> float | None:
        """The current round's score threshold theta (``t(q, d) >= theta`` flags), or None."""
        if self._state is not None:
            return self._state.threshold
        return self.threshold if self.rule == "absolute" else None

    def masking(self, round: int = -1) -> FalseNegativeMasking:
        """What :class:`~md2pr_st.losses.MD2PRLoss` masks in L_c after the round (default: the last one held, fitted or
        loaded with :meth:`load_statistics`): its margin and threshold if it masked, nothing if it dropped."""
        return FalseNegativeMasking.of_round(self.rounds[round] if self.rounds else {})

    def decide(self, batch: Mapping[str, Sequence]) -> dict[str, Any]:
        """Scores, thresholds and flags of a batch with the current round's criteria, without filtering it.

        Returns ``{"columns", "positive_scores" (R,), "candidate_scores" (R, K), "thresholds" (R,),
        "flags" (R, K)}`` with ``flags = candidate_scores >= thresholds[:, None]``.
        """
        columns, scores = self._scores(batch)
        mapper = self.mapper()
        positive, candidates = scores[:, 0], scores[:, 1:]
        return {
            "columns": columns,
            "positive_scores": positive,
            "candidate_scores": candidates,
            "thresholds": mapper.thresholds(positive),
            "flags": mapper.flags(positive, candidates),
        }

    def apply(
        self, dataset: Dataset, fit: bool = True, batch_size: int = 1000, num_proc: int | None = None
    ) -> Dataset:
        """Score ``dataset``, fit a new round on it (unless ``fit=False``) and filter it with ``Dataset.map``
        (cached like any map; ``num_proc`` processes)."""
        scored = self.score(dataset)
        if fit:
            self._fit_scored(scored)
        return scored.map(
            self.mapper(),
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc,
            remove_columns=scored.column_names,
            desc="Filtering false negatives",
        )

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        raise TypeError(
            "FalseNegativeFilter is no map function: map with the fitted, picklable fn_filter.mapper() "
            "(dataset.map(fn_filter.mapper(), batched=True, remove_columns=dataset.column_names) on the output of "
            "fn_filter.score(dataset)), or use fn_filter.apply(dataset)."
        )

    # -- statistics -------------------------------------------------------------------------------------------

    @property
    def statistics(self) -> dict[str, Any]:
        """``{"rule", "config", "rounds": [per round: criteria, counts, score, gap and threshold summaries]}``."""
        return {"rule": self.rule, "config": self.get_config_dict(), "rounds": [dict(r) for r in self.rounds]}

    def save_statistics(self, path: str | Path) -> Path:
        """Write :attr:`statistics` as JSON, atomically."""
        return write_json(path, self.statistics)

    def load_statistics(self, path: str | Path) -> FalseNegativeFilter:
        """Continue the rounds saved by :meth:`save_statistics`: the next :meth:`fit` is round ``len(rounds) + 1``.

        Rounds are merged by their number (a saved round replaces one of the same number held here), so loading the
        cumulative files of rounds 1, 2, ... one after the other, as a resumed pipeline does, gives rounds 1, 2, ...
        once each. The last round's margin and threshold become the current criteria when it used this rule.
        """
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
        last = self.rounds[-1] if self.rounds else {}
        if self.rule in ADAPTIVE_RULES and last.get("rule") == self.rule:
            self._state = self._mapper(margin=last.get("margin"), threshold=last.get("threshold"))
        return self

    def plot(self, path: str | Path, round: int = -1, bins: int = 60) -> Path:
        """A PNG histogram of the round's teacher score gaps ``t(q, d+) - t(q, d)``, flagged candidates in red and
        the margin m_r (dynamic / margin rules) as a vertical line."""
        if not self.rounds:
            raise RuntimeError("No round yet: call fit(dataset) (or apply) before plotting.")
        stats = self.rounds[round]
        if stats["round"] not in self._fitted:
            raise RuntimeError(
                f"Round {stats['round']} was not fitted by this object (loaded from a file), so its gaps were not "
                "recorded: plot right after fit/apply."
            )
        gaps, flags = self._fitted[stats["round"]]
        title = f"Round {stats['round']}: {stats['rule']} rule, {stats['rows']} rows"
        if stats.get("threshold") is not None:
            title += f", theta_r = {stats['threshold']:.3f}"
        margin = stats["margin"] if stats["rule"] in ("dynamic", "margin") else None
        return plot_filter_gaps(gaps, flags, path, margin=margin, title=title, bins=bins)
