"""The library's checks of settings, written once and used wherever a setting is given: by the option dataclasses
(:mod:`md2pr_st.config`, :mod:`md2pr_st.cli.arguments`) when they are created, and by the functions and classes
that take the setting (the losses, the filter, mining, training).

- :func:`check_type`: a value against its field's annotation (a YAML config is not type-converted);
- :func:`check_range`: NaN and infinite numbers refused everywhere, the bounds of :data:`RANGES` and
  :data:`UNIT_INTERVAL` by field name;
- :func:`check_weight`, :func:`check_positive`: the losses' weights and temperatures;
- :func:`check_choice`, :func:`check_rank_range`, :func:`check_margin_clip`: a name among choices, a mining rank
  range, a margin's clip.

Only the standard library is imported: the command line checks its options before any work.
"""

from __future__ import annotations

import math
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
}
# Fields that are fractions.
UNIT_INTERVAL = ("quantile", "filter_quantile")

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
    if name in RANGES:
        low, inclusive, what = RANGES[name]
        if value < low or (value == low and not inclusive):
            raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {low:g} ({what}), got {value:g}.")
    if name in UNIT_INTERVAL and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value:g}.")


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
