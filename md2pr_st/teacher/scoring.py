"""Teacher scores for candidate lists: the one place that builds the (query, passage) pairs a teacher scores, and
the graded judgements as a teacher.

A *scorer* is anything with ``score(pairs, batch_size=..., show_progress_bar=...) -> logits``: a
:class:`~md2pr_st.teacher.Teacher` (a cross-encoder) or a :class:`QrelsScorer` (graded judgements).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from md2pr_st import distributed
from md2pr_st.data import RetrievalData


def candidate_pairs(queries: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """The (query, candidate) pairs of a candidate list per query, query by query, in list order.

    Example:
        >>> candidate_pairs(["q1", "q2"], [["a", "b"], ["c"]])
        [('q1', 'a'), ('q1', 'b'), ('q2', 'c')]
    """
    if len(queries) != len(candidates):
        raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists: they must pair up.")
    return [(query, passage) for query, passages in zip(queries, candidates) for passage in passages]


def score_candidates(
    scorer: Any,
    queries: Sequence[str],
    candidates: Sequence[Sequence[str]],
    batch_size: int | None = None,
    show_progress_bar: bool | None = None,
) -> list[np.ndarray]:
    """Teacher scores ``t(q, d)`` of every query's candidates: one float64 array per query, in list order.

    All pairs go to the scorer in one call, so a :class:`~md2pr_st.teacher.Teacher` sorts them by length for the
    least padding. On several launched processes inside :func:`md2pr_st.distributed.shared_work`, a scorer whose
    ``shard_across_processes`` is true (a :class:`~md2pr_st.teacher.Teacher`) scores each process's share of the
    pairs and every process gets all the scores. A rectangular input (the same number of candidates per query) stacks with ``np.stack``.

    Example:
        >>> class Length:  # a toy scorer: the passage length
        ...     def score(self, pairs, batch_size=None, show_progress_bar=None):
        ...         return [float(len(d)) for _, d in pairs]
        >>> [s.tolist() for s in score_candidates(Length(), ["q1", "q2"], [["ab", "abc"], ["a"]])]
        [[2.0, 3.0], [1.0]]
    """
    pairs = candidate_pairs(queries, candidates)
    kwargs: dict[str, Any] = {"show_progress_bar": show_progress_bar}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if getattr(scorer, "shard_across_processes", False) and distributed.sharing():
        # Launched on several processes: each scores its contiguous share, all get every score in order.
        start, stop = distributed.shard_bounds(len(pairs))
        if not distributed.is_main():
            kwargs["show_progress_bar"] = False
        mine = np.asarray(scorer.score(pairs[start:stop], **kwargs), dtype=np.float64) if stop > start else []
        flat = np.asarray(distributed.gather_shards(list(mine)), dtype=np.float64)
    else:
        flat = np.asarray(scorer.score(pairs, **kwargs), dtype=np.float64) if pairs else np.zeros(0)
    if flat.shape != (len(pairs),):
        raise ValueError(f"The scorer returned {flat.shape} scores for {len(pairs)} pairs; it must give one each.")
    bounds = np.cumsum([0, *(len(c) for c in candidates)])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class QrelsScorer:
    """Graded judgements as a teacher: ``score([(query, passage), ...])`` returns each pair's qrels grade.

    ``g(q, d)`` is the grade ``data.qrels`` gives passage ``d`` for query ``q`` (matched by text: the highest grade
    of any corpus passage with that text) and 0 for a passage the query's qrels do not judge. It has the scorer
    interface of :class:`~md2pr_st.teacher.Teacher`, so :class:`~md2pr_st.false_negatives.FalseNegativeFilter`
    flags false negatives and writes the ``scores`` column from it: offline teacher scores for
    :class:`~md2pr_st.losses.MD2PRLoss`'s sentence level when the judgements come from a stronger model than any
    cross-encoder at hand (RAG24's UMBRELA grades are GPT-4o's).

    Example:
        >>> from datasets import Dataset
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris.", "Lyon.", "Tea."]}),
        ...     queries=Dataset.from_dict({"id": ["q"], "text": ["capital of france"]}),
        ...     qrels={"q": {"a": 3, "b": 1}},
        ... )
        >>> QrelsScorer(data).score([("capital of france", "Paris."), ("capital of france", "Tea.")]).tolist()
        [3.0, 0.0]
    """

    def __init__(self, data: RetrievalData) -> None:
        text_of = dict(zip(data.corpus["id"], data.corpus["text"]))
        self.name = data.name
        self.model_name = f"qrels of {data.name}"
        self._query_id = {text: qid for qid, text in zip(data.queries["id"], data.queries["text"])}
        self._grade: dict[tuple[str, str], float] = {}
        for qid, docs in data.qrels.items():
            for doc_id, grade in docs.items():
                key = (qid, text_of[doc_id])
                self._grade[key] = max(self._grade.get(key, float("-inf")), float(grade))

    def score(
        self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> np.ndarray:
        """The grade of each (query, passage) pair (0 for a pair the qrels do not judge)."""
        unknown = sorted({q for q, _ in pairs if q not in self._query_id})
        if unknown:
            raise ValueError(
                f"{len(unknown)} queries are not in {self.name}'s queries (e.g. {unknown[0][:60]!r}), so their grades "
                "are unknown. Score data without judgements with a cross-encoder (sentence_scores='teacher')."
            )
        return np.array([self._grade.get((self._query_id[q], d), 0.0) for q, d in pairs], dtype=np.float64)
