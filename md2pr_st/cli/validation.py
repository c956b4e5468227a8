"""Checks of every option before any work: types (a YAML config is not type-converted), finite numbers, ranges.

:class:`Options` is the base of the option dataclasses in :mod:`md2pr_st.cli.arguments`: its ``__post_init__``
checks each field against its annotation (``with_ids: "no"`` in a YAML file is a string, not a boolean), refuses
NaN and infinite floats, and applies the range of :data:`RANGES` to the fields of that name. A subclass adds its
cross-field checks in ``__post_init__`` after ``super().__post_init__()``. Only the standard library is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

OVERWRITE_HELP = "Replace an output that exists and that md2pr did not write."
# field name -> (lowest allowed value, whether the lowest value itself is allowed, what the field is)
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
    "alpha": (0, True, "a loss weight"),
    "beta": (0, True, "a loss weight"),
    "scale": (0, False, "1 / temperature"),
    "student_temperature": (0, False, "a temperature"),
    "teacher_temperature": (0, False, "a temperature"),
    "word_temperature": (0, False, "a temperature"),
    "attention_temperature": (0, False, "a temperature"),
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


def check_rank_range(range_min: int, range_max: int, num_negatives: int) -> None:
    """Mining takes ``num_negatives`` from ranks ``range_min .. range_max - 1``: checked before any work.

    Example:
        >>> check_rank_range(0, 3, 4)
        Traceback (most recent call last):
        ...
        ValueError: Cannot take 4 candidates from ranks 0..2: raise range_max or lower the number of negatives.
    """
    if range_max <= range_min:
        raise ValueError(f"range_max ({range_max}) must be greater than range_min ({range_min}).")
    if num_negatives > range_max - range_min:
        raise ValueError(
            f"Cannot take {num_negatives} candidates from ranks {range_min}..{range_max - 1}: raise range_max or "
            "lower the number of negatives."
        )


class Options:
    """Base of the option dataclasses: every field is checked for its type, finiteness and range on creation."""

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
