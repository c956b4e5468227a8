"""The library's settings: the option names each stage accepts, and the settings dataclasses the library takes.

:func:`~md2pr_st.pipeline.run_pipeline` takes :class:`PipelineArguments` (the teacher's, mining's, the filter's and
the student's settings of a whole run) and :class:`LossArguments` (the weights and temperatures of
:class:`~md2pr_st.losses.MD2PRLoss`); :func:`~md2pr_st.student.train_student` takes :class:`LossArguments`. The
command line parses its flags into them (:mod:`md2pr_st.cli.arguments`).

Every settings class is an :class:`Options`: it checks each field on creation (its type, finiteness and range, with
:mod:`md2pr_st.validation`), then the checks that span fields. The names a setting may take (the rules of the
false-negative filter, the teacher's losses, the word level's pairs, ...) are defined here once; the modules that
implement them import them from here. Only the standard library is imported: the command line builds these classes
before any work.

Example:
    >>> LossArguments(alpha=-1)
    Traceback (most recent call last):
    ...
    ValueError: alpha must be a non-negative finite number, got -1: alpha must be >= 0 (0 switches that part off).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from md2pr_st.validation import (
    check_choice,
    check_positive,
    check_range,
    check_rank_range,
    check_type,
    check_weight,
)

__all__ = [
    "ADAPTIVE_RULES",
    "DEFAULT_QUANTILE",
    "FILTER_ACTIONS",
    "LIST_LOSSES",
    "MASKABLE_RULES",
    "RULES",
    "SAMPLINGS",
    "SCHEDULES",
    "SENTENCE_SCORES",
    "TEACHER_LOSSES",
    "WORD_LEVEL_PAIRS",
    "LossArguments",
    "Options",
    "PipelineArguments",
    "check_teacher_loss",
    "positives_per_query",
]

# -- the names a setting may take --------------------------------------------------------------------------------

# MD2PRLoss(word_level_pairs=): each query with every candidate, or with its positive only.
WORD_LEVEL_PAIRS = ("all", "positives")
# LossWeightSchedule(schedule=): a loss weight over training.
SCHEDULES = ("constant", "warmup", "decay")
#: ``--loss`` name -> the host's loss class (``sentence_transformers.cross_encoder.losses``).
TEACHER_LOSSES = {
    "bce": "BinaryCrossEntropyLoss",  # pointwise: BCEWithLogits(t(q, d), y)
    "ranknet": "RankNetLoss",  # pairwise: log(1 + exp(-(t_i - t_j))) over pairs with y_i > y_j
    "lambda": "LambdaLoss",  # listwise: RankNet's pairs weighted by their nDCG change (NDCGLoss2++)
    "listmle": "ListMLELoss",  # listwise: -log Plackett-Luce likelihood of the labels' order (ties: the list's)
}
#: The losses that train on lists of a query's passages rather than on single pairs.
LIST_LOSSES = frozenset(TEACHER_LOSSES) - {"bce"}
# dynamic: a quantile of the gaps; positives: a quantile of the positives' scores; mixture: a two-component mixture
# of the candidates' scores; positives_mixture: the same with the high component fixed to the positives' scores.
RULES = ("dynamic", "margin", "relative", "absolute", "positives", "mixture", "positives_mixture")
# Rules re-estimated from each round's scores (the others are fixed).
ADAPTIVE_RULES = ("dynamic", "positives", "mixture", "positives_mixture")
# Rules whose flags are exactly ``t(q, d) >= t(q, d+) - m`` or ``t(q, d) >= tau`` for one margin m and one threshold
# tau per round, so MD2PRLoss (false_negative_margin, false_negative_threshold) can mask what they flag.
MASKABLE_RULES = ("dynamic", "margin", "absolute", "positives", "mixture", "positives_mixture")
# The quantile p of a rule when none is given.
DEFAULT_QUANTILE = {"dynamic": 0.1, "positives": 0.5}
# What the filter does with a flagged candidate: keep it for the loss to mask in L_c, or drop it and refill the row.
FILTER_ACTIONS = ("mask", "drop")
# How mining takes negatives from its rank range: the best-ranked, or a uniform sample kept in rank order.
SAMPLINGS = ("top", "random")
# The teacher scores of the sentence level: the cross-encoder's logits, or the graded judgements.
SENTENCE_SCORES = ("teacher", "qrels")


def check_teacher_loss(loss: str, list_size: int) -> None:
    """Refuse an unknown teacher loss name or a list of fewer than 2 passages, saying what is accepted.

    Example:
        >>> check_teacher_loss("lambda", 1)
        Traceback (most recent call last):
        ...
        ValueError: list_size must be >= 2 for the ranking loss 'lambda' (it compares passages), got 1.
    """
    if loss not in TEACHER_LOSSES:
        raise ValueError(f"Unknown teacher loss {loss!r}; choose one of {', '.join(TEACHER_LOSSES)}.")
    if loss in LIST_LOSSES and list_size < 2:
        raise ValueError(
            f"list_size must be >= 2 for the ranking loss {loss!r} (it compares passages), got {list_size}."
        )


def positives_per_query(positives: Any) -> int | None:
    """``"all"`` -> None (no cap), ``"best"`` -> 1, ``k`` or ``"k"`` -> k.

    Example:
        >>> positives_per_query("all"), positives_per_query("best"), positives_per_query("2")
        (None, 1, 2)
    """
    if positives == "all":
        return None
    if positives == "best":
        return 1
    try:
        k = int(positives)
    except (TypeError, ValueError):
        k = 0
    if k < 1 or isinstance(positives, float):
        raise ValueError(f"positives must be 'all', 'best' or a positive integer k, got {positives!r}.")
    return k


# -- settings dataclasses ----------------------------------------------------------------------------------------


class Options:
    """Base of the settings dataclasses: every field is checked for its type, finiteness and range on creation.

    A subclass adds its cross-field checks in ``__post_init__`` after ``super().__post_init__()``.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            check_type(field.name, value, hints.get(field.name, Any))
            check_range(field.name, value)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # The annotations themselves: HfArgumentParser rewrites the dataclass fields' `type` while it parses.
    return typing.get_type_hints(cls)


@dataclasses.dataclass
class LossArguments(Options):
    """Weights and temperatures of ``L = L_c + alpha * L_s + beta * L_w`` (see :class:`~md2pr_st.losses.MD2PRLoss`),
    taken by :func:`~md2pr_st.student.train_student` and :func:`~md2pr_st.pipeline.run_pipeline` (the options of
    ``md2pr train`` and ``md2pr pipeline``). Checked as the loss checks them."""

    alpha: float = dataclasses.field(default=1.0, metadata={"help": "Weight of the sentence-level loss."})
    beta: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "Weight of the word-level loss (needs a cross-encoder teacher). 0 by default: on RAG24 every "
            "weight tried lowered dev nDCG@10 (BENCHMARKS.md); try e.g. 0.1 with a teacher far stronger than the "
            "student."
        },
    )
    scale: float = dataclasses.field(default=20.0, metadata={"help": "1 / tau of the contrastive loss."})
    student_temperature: float = dataclasses.field(default=0.05, metadata={"help": "T_s of the sentence level."})
    teacher_temperature: float = dataclasses.field(default=1.0, metadata={"help": "T_t of the sentence level."})
    word_temperature: float = dataclasses.field(default=0.05, metadata={"help": "tau_w of the word level."})
    attention_temperature: float = dataclasses.field(
        default=0.4,
        metadata={
            "help": "T_a of the word level: the teacher's attention rows become A^(1/T_a), sharpened to the "
            "student's entropy."
        },
    )
    word_level_pairs: str = dataclasses.field(
        default="all",
        metadata={"help": "Pairs of the word level: all (each query with every candidate) or positives only."},
    )
    beta_schedule: str = dataclasses.field(
        default="constant",
        metadata={
            "help": "beta over training: constant, warmup (0 -> beta over the first half), decay (beta -> 0 over "
            "the second half)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "beta"):
            check_weight(name, getattr(self, name))
        for name in (
            "scale",
            "student_temperature",
            "teacher_temperature",
            "word_temperature",
            "attention_temperature",
        ):
            check_positive(name, getattr(self, name))
        check_choice("word_level_pairs", self.word_level_pairs, WORD_LEVEL_PAIRS)
        check_choice("beta_schedule", self.beta_schedule, SCHEDULES)


@dataclasses.dataclass
class PipelineArguments(Options):
    """The settings of one :func:`~md2pr_st.pipeline.run_pipeline` run: the teacher, the rounds' mining, filter and
    student training, the evaluation (the options of ``md2pr pipeline``; ``md2pr demo`` only changes defaults)."""

    output_dir: str = dataclasses.field(default="runs/md2pr", metadata={"help": "The run folder."})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "Student: Hub id or folder (default: the embedded all-MiniLM-L6-v2)."}
    )
    teacher: str | None = dataclasses.field(
        default=None,
        metadata={"help": "A trained cross-encoder (Hub id or folder): skips teacher training."},
    )
    teacher_base: str | None = dataclasses.field(
        default=None, metadata={"help": "Backbone of a teacher trained here (default: embedded MiniLM)."}
    )
    teacher_epochs: float = dataclasses.field(default=1.0, metadata={"help": "Teacher training epochs."})
    teacher_learning_rate: float = dataclasses.field(
        default=5e-5, metadata={"help": "Teacher learning rate (its one-logit head starts from scratch)."}
    )
    teacher_max_length: int = dataclasses.field(default=256, metadata={"help": "Teacher max tokens per pair."})
    teacher_max_pairs: int | None = dataclasses.field(
        default=None, metadata={"help": "Train the teacher on at most this many pairs (bounds CPU time)."}
    )
    teacher_random_negatives: int = dataclasses.field(
        default=2, metadata={"help": "Label-0 corpus passages per query in teacher training."}
    )
    teacher_mined_negatives: int = dataclasses.field(
        default=0,
        metadata={
            "help": "Label-0 passages per query mined by the student from the whole corpus (the best-ranked the "
            "query's judgements do not cover) in teacher training."
        },
    )
    teacher_loss: str = dataclasses.field(
        default="bce", metadata={"help": "Teacher training loss: bce, ranknet, lambda, listmle."}
    )
    teacher_list_size: int = dataclasses.field(
        default=8, metadata={"help": "Passages per list of a ranking teacher loss (16 // this lists per step)."}
    )
    rounds: int = dataclasses.field(default=2, metadata={"help": "Rounds of mine -> filter -> train -> evaluate."})
    num_negatives: int = dataclasses.field(default=4, metadata={"help": "Hard negatives per training row."})
    mine_candidates: int = dataclasses.field(
        default=8, metadata={"help": "Candidates mined per row before filtering (refill pool)."}
    )
    range_min: int = dataclasses.field(default=0, metadata={"help": "Skip this many top-ranked non-positives."})
    range_max: int = dataclasses.field(default=50, metadata={"help": "Mine candidates from ranks up to this."})
    sampling: str = dataclasses.field(default="top", metadata={"help": "'top' or 'random' within the range."})
    min_grade: int = dataclasses.field(default=2, metadata={"help": "Lowest qrels grade used as a positive."})
    positives: str = dataclasses.field(
        default="all",
        metadata={
            "help": "Training rows per query: 'all' (one per positive), 'best' (one) or the k best-graded ('2'); "
            "mining excludes every known positive either way."
        },
    )
    filter_rule: str = dataclasses.field(
        default="positives",
        metadata={
            "help": "False-negative rule re-estimated every round: positives, dynamic, mixture or positives_mixture "
            "(fixed rules: md2pr filter, then md2pr train)."
        },
    )
    filter_action: str = dataclasses.field(
        default="mask",
        metadata={
            "help": "Flagged candidates: 'mask' (kept in the row for the sentence level, left out of L_c's "
            "denominator) or 'drop' (removed; the row is refilled from the other mined candidates)."
        },
    )
    filter_quantile: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "p of the rule: dynamic m_r = Q_p(the round's teacher gaps) (default 0.1); positives "
            "theta_r = Q_p(the round's positives' scores) (default 0.5)."
        },
    )
    sentence_scores: str = dataclasses.field(
        default="teacher",
        metadata={
            "help": "Teacher scores of the sentence level L_s and the filter: 'teacher' (the cross-encoder's logits; "
            "flagged candidates are dropped) or 'qrels' (the train split's graded judgements, e.g. RAG24's UMBRELA "
            "LLM grades, unjudged = 0; flagged candidates stay for L_s, masked out of L_c). The cross-encoder "
            "teaches the word level either way."
        },
    )
    epochs_per_round: float = dataclasses.field(default=1.0, metadata={"help": "Student epochs per round."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Student training batch size."})
    learning_rate: float = dataclasses.field(default=2e-5, metadata={"help": "Student learning rate."})
    max_seq_length: int | None = dataclasses.field(
        default=None, metadata={"help": "Student max tokens (default: the model's own)."}
    )
    rerank_k: int = dataclasses.field(default=20, metadata={"help": "Teacher reranks the student's top-k (test)."})
    save_steps: int = dataclasses.field(default=20, metadata={"help": "Student checkpoint interval (resume)."})
    seed: int = dataclasses.field(default=13, metadata={"help": "Seed of sampling and training."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "Write into an existing non-empty folder that md2pr did not create."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rank_range(self.range_min, self.range_max, self.mine_candidates)
        if self.mine_candidates < self.num_negatives:
            raise ValueError(
                f"mine_candidates ({self.mine_candidates}) must be >= num_negatives ({self.num_negatives}): the "
                "filter refills rows from the mined candidates."
            )
        check_choice("sentence_scores", self.sentence_scores, SENTENCE_SCORES, quoted=True)
        if self.filter_rule not in ADAPTIVE_RULES:
            raise ValueError(
                f"md2pr pipeline re-estimates the threshold every round (filter_rule one of {', '.join(ADAPTIVE_RULES)}"
                f"); got {self.filter_rule!r}. For a fixed rule, run the stages alone: md2pr filter --rule ... then "
                "md2pr train."
            )
        check_choice("filter_action", self.filter_action, FILTER_ACTIONS, quoted=True)
        positives_per_query(self.positives)  # fails now, not after the teacher has trained
        check_teacher_loss(self.teacher_loss, self.teacher_list_size)
        check_choice("sampling", self.sampling, SAMPLINGS, quoted=True)
