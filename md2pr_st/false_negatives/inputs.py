"""Checks of a round's input: the columns, the texts and the teacher scores, with errors that say how to fix them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from md2pr_st.data import negative_columns

__all__ = ["candidate_columns", "check_scores", "check_texts"]


def candidate_columns(
    columns: Sequence[str],
    query_column: str = "query",
    positive_column: str = "positive",
    scores_column: str | None = None,
    num_negatives: int | None = None,
) -> list[str]:
    """The ``negative_<i>`` columns of a round's input, after checking that it has what filtering needs: the query
    and positive columns, candidates, the ``scores_column`` (when given: no teacher scores the round) and at least
    ``num_negatives`` candidates.

    Example:
        >>> candidate_columns(["query", "positive", "negative_2", "negative_1"])
        ['negative_1', 'negative_2']
    """
    missing = [c for c in (query_column, positive_column) if c not in columns]
    if missing:
        raise ValueError(
            f"FalseNegativeFilter needs the columns {query_column!r}, {positive_column!r} and negative_1..negative_n; "
            f"the input lacks {missing} (it has {list(columns)}). Pass query_column=/positive_column= or rename the "
            "columns."
        )
    candidates = negative_columns(columns)
    if not candidates:
        raise ValueError(
            f"The input has no candidate columns (negative_1, negative_2, ...): it has {list(columns)}. Mine "
            "candidates first (md2pr_st.mining.mine_hard_negatives) or rename them to negative_<i>."
        )
    if scores_column is not None and scores_column not in columns:
        raise ValueError(
            f"FalseNegativeFilter has no teacher and the input has no {scores_column!r} column of teacher scores. "
            "Pass teacher=... (a CrossEncoder or its path) or add the scores column."
        )
    if num_negatives is not None and num_negatives > len(candidates):
        raise ValueError(
            f"num_negatives={num_negatives} but the input has only {len(candidates)} candidate columns. Mine more "
            "candidates or lower num_negatives."
        )
    return candidates


def check_texts(
    table: Mapping[str, Sequence],
    columns: Sequence[str],
    query_column: str = "query",
    positive_column: str = "positive",
) -> None:
    """Every row of ``table`` (column name -> values) has a query, a positive and a text in every candidate column."""
    queries, positives = table[query_column], table[positive_column]
    for i, (query, positive) in enumerate(zip(queries, positives)):
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"Row {i} has an empty or missing query.")
        if not isinstance(positive, str) or not positive.strip():
            raise ValueError(
                f"Row {i} (query {query[:60]!r}) has no positive ({positive!r}). Every row needs its positive: the "
                "thresholds are relative to it. Drop such rows first."
            )
        for c in columns:
            text = table[c][i]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"Row {i} (query {query[:60]!r}) has an empty candidate list entry: {c} = {text!r}. Every "
                    "candidate column needs a passage text in every row; re-mine or drop the row."
                )


def check_scores(
    scores: Any, queries: Sequence[str], columns: Sequence[str], positive_column: str, scores_column: str
) -> np.ndarray:
    """``scores`` as a (rows, 1 + K) float64 array (positive first), or a clear error on a bad shape, NaN or inf."""
    try:
        array = np.asarray(scores, dtype=np.float64)
    except ValueError:  # ragged lists
        array = np.empty(0)
    if array.shape != (len(queries), len(columns) + 1):
        raise ValueError(
            f"The {scores_column!r} column must hold {len(columns) + 1} teacher scores per row (the positive, then "
            f"{len(columns)} candidates); got shape {array.shape}."
        )
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        i, j = (int(x) for x in bad[0])
        where = positive_column if j == 0 else columns[j - 1]
        raise ValueError(
            f"The teacher gave {len(bad)} NaN or infinite scores, e.g. row {i}, {where} (query {queries[i][:60]!r}). "
            "False negatives cannot be judged on NaN: check the teacher (weights, fp16 overflow) or the precomputed "
            "scores column."
        )
    return array
