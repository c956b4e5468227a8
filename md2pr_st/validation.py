"""The library's checks of settings, written once and used wherever a setting is given: by the option dataclasses
(:mod:`md2pr_st.config`, :mod:`md2pr_st.cli.arguments`) when they are created, and by the functions and classes
that take the setting (the losses, the filter, mining, training).

- :func:`check_type`: a value against its field's annotation (a YAML config is not type-converted);
- :func:`check_range`: NaN and infinite numbers refused everywhere, the bounds of :data:`RANGES` and
  :data:`UNIT_INTERVAL` by field name (md2pr's options and the host trainer's that md2pr passes on:
  :func:`check_trainer_options`);
- :func:`check_grade`: a grade option inside the grades of the data it is used on;
- :func:`check_weight`, :func:`check_positive`: the losses' weights and temperatures;
- :func:`check_choice`, :func:`check_rank_range`, :func:`check_margin_clip`: a name among choices, a mining rank
  range, a margin's clip.

Only the standard library is imported: the command line checks its options before any work.
"""

from __future__ import annotations

import math
import os
import types
import typing
from typing import Any

# field name -> (lowest allowed value, whether the lowest value itself is allowed, what the field is). The losses'
# weights and temperatures are checked by check_weight and check_positive, not here.
RANGES: dict[str, tuple[float, bool, str]] = {
    "batch_size": (1, True, "a number of examples per batch"),
    "epochs": (0, False, "a number of epochs"),
    "epochs_per_round": (0, False, "a number of epochs"),
    "teacher_epochs": (0, False, "a number of epochs"),
    "learning_rate": (0, False, "a learning rate"),
    "teacher_learning_rate": (0, False, "a learning rate"),
    "max_seq_length": (1, True, "a number of tokens"),
    "max_length": (1, True, "a number of tokens"),
    "teacher_max_length": (1, True, "a number of tokens"),
    "save_steps": (1, True, "a number of steps"),
    "rerank_k": (1, True, "a number of documents"),
    "rounds": (1, True, "a number of rounds"),
    "num_negatives": (1, True, "a number of negatives"),
    "mine_candidates": (1, True, "a number of candidates"),
    "query_batch_size": (1, True, "a number of queries"),
    "range_min": (0, True, "a rank"),
    "range_max": (1, True, "a rank"),
    "chunk_size": (1, True, "a number of passages"),
    "random_negatives": (0, True, "a number of passages"),
    "teacher_random_negatives": (0, True, "a number of passages"),
    "mined_negatives": (0, True, "a number of passages"),
    "teacher_mined_negatives": (0, True, "a number of passages"),
    "max_pairs": (1, True, "a number of pairs"),
    "teacher_max_pairs": (1, True, "a number of pairs"),
    "num_proc": (1, True, "a number of processes"),
    "seed": (0, True, "a seed"),
    "split_seed": (0, True, "a seed"),
    "list_size": (1, True, "a number of passages"),
    "teacher_list_size": (1, True, "a number of passages"),
    "min_grade": (1, True, "the lowest grade of a positive; grade 0 means not relevant"),
    "relevance_cut": (1, True, "the lowest grade counted relevant; grade 0 means not relevant"),
    # The host trainer's options that md2pr passes on (`md2pr train --weight_decay 0.01`).
    "num_train_epochs": (0, False, "a number of epochs"),
    "per_device_train_batch_size": (1, True, "a number of examples per batch"),
    "per_device_eval_batch_size": (1, True, "a number of examples per batch"),
    "gradient_accumulation_steps": (1, True, "a number of steps"),
    "weight_decay": (0, True, "a weight decay"),
    "warmup_steps": (0, True, "a number of steps, or below 1 a share of them"),
    "max_grad_norm": (0, True, "a gradient norm; 0 switches clipping off"),
    "adam_epsilon": (0, False, "a small constant"),
    "logging_steps": (0, False, "a number of steps, or below 1 a share of them"),
    "eval_steps": (0, False, "a number of steps, or below 1 a share of them"),
    "save_total_limit": (1, True, "a number of checkpoints"),
    "dataloader_num_workers": (0, True, "a number of processes"),
    "dataloader_prefetch_factor": (1, True, "a number of batches"),
    "data_seed": (0, True, "a seed"),
    "eval_accumulation_steps": (1, True, "a number of steps"),
}
# field name -> (highest allowed value, why): numpy takes 32-bit seeds; more processes than a few per CPU only wait.
UPPER: dict[str, tuple[int, str]] = {
    "seed": (2**32 - 1, "a 32-bit seed"),
    "split_seed": (2**32 - 1, "a 32-bit seed"),
    "data_seed": (2**32 - 1, "a 32-bit seed"),
    "num_proc": (4 * (os.cpu_count() or 1), "four processes per CPU of this machine"),
    "dataloader_num_workers": (4 * (os.cpu_count() or 1), "four processes per CPU of this machine"),
}
# Fields that are fractions.
UNIT_INTERVAL = ("quantile", "filter_quantile", "warmup_ratio", "label_smoothing_factor")
# Fractions below 1: Adam's moment decays (at 1 its bias correction divides by 0).
BELOW_ONE = ("adam_beta1", "adam_beta2")
# The largest count or index any option may take: torch, faiss and the tokenizers index with 64-bit integers.
LARGEST_INTEGER = 2**63 - 1

_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def _kinds(annotation: Any) -> list[Any]:
    """The alternatives of an annotation (``int | None`` -> ``[int, NoneType]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits a field annotation (``int | None``, ``list[str]``, ...)."""
    for kind in _kinds(annotation):
        if kind is type(None):
            if value is None:
                return True
        elif kind is bool:
            if isinstance(value, bool):
                return True
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif kind is str:
            if isinstance(value, str):
                return True
        elif typing.get_origin(kind) is list:
            if isinstance(value, list) and all(_matches(v, typing.get_args(kind)[0]) for v in value):
                return True
        else:
            return True  # an annotation this check does not know
    return False


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def check_type(name: str, value: Any, annotation: Any) -> None:
    """Raise a ``ValueError`` naming the option when ``value`` does not fit ``annotation``.

    Example:
        >>> check_type("with_ids", "no", bool)
        Traceback (most recent call last):
        ...
        ValueError: with_ids: expected true or false, got the string 'no' (write true or false, without quotes).
    """
    if _matches(value, annotation):
        return
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    kinds = _kinds(annotation)
    wanted = " or ".join(
        words.get(k, "a list" if typing.get_origin(k) is list else str(k)) for k in kinds if k is not type(None)
    )
    if type(None) in kinds:
        wanted += " (or null)"
    hint = ""
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS and bool in kinds:
        hint = " (write true or false, without quotes)"
    raise ValueError(f"{name}: expected {wanted}, got {_describe(value)}{hint}.")


def check_range(name: str, value: Any) -> None:
    """NaN and infinite numbers are refused for every field; :data:`RANGES` and :data:`UNIT_INTERVAL` bound those
    fields by name.

    Example:
        >>> check_range("batch_size", 0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be >= 1 (a number of examples per batch), got 0.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    shown = value if isinstance(value, int) else f"{value:g}"
    if isinstance(value, int) and abs(value) > LARGEST_INTEGER:
        raise ValueError(f"{name} must lie within +-{LARGEST_INTEGER} (a 64-bit integer), got {shown}.")
    if name in RANGES:
        low, inclusive, what = RANGES[name]
        if value < low or (value == low and not inclusive):
            raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {low:g} ({what}), got {shown}.")
    if name in UPPER and value > UPPER[name][0]:
        high, what = UPPER[name]
        raise ValueError(f"{name} must be <= {high} ({what}), got {shown}.")
    if name in UNIT_INTERVAL and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {shown}.")
    if name in BELOW_ONE and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {shown}.")


def check_trainer_options(options: typing.Mapping[str, Any]) -> None:
    """The host trainer's options that md2pr passes on (``{name: value}``), checked like md2pr's own:
    finite, and in range by name (:data:`RANGES`); ``max_steps`` is -1 (unset: train by epochs) or >= 1.

    Example:
        >>> check_trainer_options({"weight_decay": float("inf")})
        Traceback (most recent call last):
        ...
        ValueError: weight_decay must be a finite number, got inf.
        >>> check_trainer_options({"gradient_accumulation_steps": 0})
        Traceback (most recent call last):
        ...
        ValueError: gradient_accumulation_steps must be >= 1 (a number of steps), got 0.
    """
    for name, value in options.items():
        check_range(name, value)
        if name == "max_steps" and isinstance(value, int) and value != -1 and value < 1:
            raise ValueError(f"max_steps must be -1 (train by epochs) or >= 1 (a number of steps), got {value}.")


def check_grade(name: str, value: int, grades: typing.Iterable[int], data: str = "the data") -> None:
    """A grade option (``min_grade``, ``relevance_cut``) must leave some judged passage at or above it in the
    data it is used on: above the highest grade, nothing would count.

    Example:
        >>> check_grade("relevance_cut", 5, [0, 1, 3], "toy-test")
        Traceback (most recent call last):
        ...
        ValueError: relevance_cut is 5 but the grades of toy-test go from 0 to 3: no passage would count. Choose a \
value in 1..3.
    """
    grades = set(grades)
    if grades and value > max(grades):
        raise ValueError(
            f"{name} is {value} but the grades of {data} go from {min(grades)} to {max(grades)}: no passage would "
            f"count. Choose a value in {min(max(1, min(grades)), max(grades))}..{max(grades)}."
        )


def check_rank_range(range_min: int, range_max: int, count: int, what: str = "candidates") -> None:
    """Mining takes ``count`` passages (``what``) from ranks ``range_min .. range_max - 1``: checked before any work.

    Example:
        >>> check_rank_range(0, 3, 4)
        Traceback (most recent call last):
        ...
        ValueError: Cannot take 4 candidates from ranks 0..2: raise range_max or lower the number of negatives.
    """
    if range_max <= range_min:
        raise ValueError(f"range_max ({range_max}) must be greater than range_min ({range_min}).")
    if count > range_max - range_min:
        raise ValueError(
            f"Cannot take {count} {what} from ranks {range_min}..{range_max - 1}: raise range_max or lower the "
            "number of negatives."
        )


def check_weight(name: str, value: Any) -> float:
    """A loss weight (``alpha``, ``beta``): a finite number >= 0, where 0 switches that part of the loss off.

    Example:
        >>> check_weight("alpha", -1)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be a non-negative finite number, got -1: alpha must be >= 0 (0 switches that part off).
    """
    if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
        raise ValueError(
            f"{name} must be a non-negative finite number, got {value!r}: {name} must be >= 0 (0 switches that part "
            "off)."
        )
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A temperature or a scale: a finite number > 0.

    Example:
        >>> check_positive("student_temperature", 0)
        Traceback (most recent call last):
        ...
        ValueError: student_temperature must be a positive finite number, got 0: student_temperature must be > 0.
    """
    if not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}: {name} must be > 0.")
    return float(value)


def check_choice(name: str, value: Any, choices: typing.Sequence[str], *, quoted: bool = False) -> None:
    """``value`` must be one of ``choices`` (named as a list, or ``quoted`` as alternatives).

    Example:
        >>> check_choice("word_level_pairs", "negatives", ("all", "positives"))
        Traceback (most recent call last):
        ...
        ValueError: word_level_pairs must be one of all, positives, got 'negatives'.
        >>> check_choice("sampling", "best", ("top", "random"), quoted=True)
        Traceback (most recent call last):
        ...
        ValueError: sampling must be 'top' or 'random', got 'best'.
    """
    if value in choices:
        return
    if quoted:
        *first, last = (repr(choice) for choice in choices)
        wanted = f"{', '.join(first)} or {last}" if first else last
    else:
        wanted = f"one of {', '.join(choices)}"
    raise ValueError(f"{name} must be {wanted}, got {value!r}.")


def check_margin_clip(min_margin: float | None, max_margin: float | None) -> None:
    """The clip ``[min_margin, max_margin]`` of the false-negative filter's margin must not be empty.

    Example:
        >>> check_margin_clip(2.0, 1.0)
        Traceback (most recent call last):
        ...
        ValueError: min_margin (2.0) must not exceed max_margin (1.0).
    """
    if min_margin is not None and max_margin is not None and min_margin > max_margin:
        raise ValueError(f"min_margin ({min_margin}) must not exceed max_margin ({max_margin}).")
