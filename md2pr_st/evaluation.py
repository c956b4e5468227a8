"""IR evaluation: nDCG@k (graded), MRR@k, Recall@k, MAP@k, Precision@k with trec_eval's own code.

Metrics come from ``pytrec_eval`` (package ``pytrec-eval-terrier``), Python bindings of NIST's trec_eval C code:
the reference implementation that TREC results are reported with, so our numbers match published ones without a
re-implementation to trust. (ranx is faster on huge runs but is itself validated against trec_eval and pulls in
numba; at our sizes trec_eval takes milliseconds.)

Definitions (per query, then averaged over queries), with rel(d) the judged grade of d, R the documents with
``rel(d) >= relevance_cut`` and rank_q the run sorted by score:

- ``ndcg@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} rel(d_i) / log2(i + 1)`` (graded gains: the grades
  themselves; the cut does not apply) and IDCG@k the DCG of the ideal ordering of all judged documents.
- ``mrr@k = 1 / (rank of the first d in R)`` if that rank is ``<= k``, else 0.
- ``recall@k = |R ∩ top-k| / |R|``; ``precision@k = |R ∩ top-k| / k``.
- ``map@k = (1/|R|) sum_{i<=k, d_i in R} precision@i``.
- ``judged@k = |top-k ∩ judged(q)| / k``: how much of the top-k the qrels judge at all. Not a quality metric but
  the check that the others can be trusted: an unjudged document counts as non-relevant, so when judged@k falls
  (a model retrieves passages outside the query's pool), the other metrics fall with it whether or not those
  passages are relevant.
- ``condensed_<metric>@k`` (e.g. ``condensed_ndcg@10``): the metric on the *condensed list* (Sakai, SIGIR 2007,
  https://doi.org/10.1145/1277741.1277756): each ranking with the documents its query's qrels do not judge taken
  out before the cut, so an unjudged document neither costs nor earns anything. Next to the standard metric and
  judged@k it tells a change caused by unjudged documents from a real one.

Queries with no document at ``grade >= relevance_cut`` are left out of every average (no system can score on
them; BEIR and sentence-transformers do the same) and reported as ``n_queries_skipped``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytrec_eval
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from md2pr_st.data import RetrievalData
from md2pr_st.index import FaissIndex, encode
from md2pr_st.models import model_fingerprint
from md2pr_st.utils import write_json
from md2pr_st.validation import check_grade, check_range

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "condensed_ndcg@10", "judged@10", "mrr@10", "recall@10", "recall@100", "map@100")
# What the pipeline reports before / after training and for the teacher's rerank.
REPORT_METRICS = ("ndcg@10", "condensed_ndcg@10", "judged@10", "mrr@10", "recall@100", "map@100")
DEFAULT_RELEVANCE_CUT = 2
_METRIC = re.compile(r"^((?:condensed_)?(?:ndcg|mrr|recall|map|precision)|judged)@(\d+)$")
# Prefix of a condensed-list measure: computed on each ranking with the documents the qrels do not judge removed.
CONDENSED = "condensed_"
_TREC_NAMES = {"ndcg": ("ndcg_cut.{k}", "ndcg_cut_{k}"), "recall": ("recall.{k}", "recall_{k}"),
               "map": ("map_cut.{k}", "map_cut_{k}"), "precision": ("P.{k}", "P_{k}")}  # fmt: skip

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def parse_metrics(metrics: Sequence[str]) -> list[tuple[str, int]]:
    """``["ndcg@10", "mrr@10"]`` -> ``[("ndcg", 10), ("mrr", 10)]``, with a clear error for anything else."""
    parsed = []
    for metric in metrics:
        match = _METRIC.match(metric.strip().lower())
        if not match or int(match.group(2)) < 1:
            raise ValueError(
                f"Unknown metric {metric!r}. Use NAME@K with NAME one of ndcg, mrr, recall, map, precision, judged "
                "(or condensed_NAME for the first five) and K >= 1, e.g. ndcg@10 or condensed_ndcg@10."
            )
        parsed.append((match.group(1), int(match.group(2))))
    return parsed


def evaluate_run(
    run: Run,
    qrels: Qrels,
    metrics: Sequence[str] = DEFAULT_METRICS,
    relevance_cut: int = DEFAULT_RELEVANCE_CUT,
    per_query: bool = False,
) -> dict:
    """Score a run against graded qrels with trec_eval (see the module docstring for the formulas).

    Args:
        run: ``{query_id: {doc_id: score}}``; higher scores rank first.
        qrels: ``{query_id: {doc_id: grade}}``.
        metrics: names such as ``"ndcg@10"``, ``"mrr@10"``, ``"recall@100"``, ``"map@100"``, ``"precision@5"``.
        relevance_cut: the lowest grade that counts as relevant for the binary metrics (MRR, recall, MAP,
            precision). nDCG always uses the grades.
        per_query: also return ``"per_query": {metric: {query_id: value}}``.

    Returns:
        ``{metric: mean value, ..., "n_queries": evaluated, "n_queries_skipped": without relevant documents}``.

    Example:
        >>> qrels = {"q1": {"a": 3, "b": 1, "c": 2, "d": 0}}
        >>> run = {"q1": {"b": 0.9, "a": 0.8, "x": 0.7, "c": 0.6}}
        >>> result = evaluate_run(run, qrels, ["mrr@10", "recall@3", "ndcg@3", "judged@4"])
        >>> result["mrr@10"], result["recall@3"], round(result["ndcg@3"], 4), result["judged@4"]
        (0.5, 0.5, 0.6075, 0.75)
        >>> round(evaluate_run(run, qrels, ["condensed_ndcg@3"])["condensed_ndcg@3"], 4)  # x taken out: b, a, c
        0.8175
    """
    parsed = parse_metrics(metrics)
    evaluable = {q: docs for q, docs in qrels.items() if any(g >= relevance_cut for g in docs.values())}
    if not evaluable:
        raise ValueError(
            f"No query has a document with grade >= {relevance_cut}, so nothing can be evaluated. Lower "
            "relevance_cut or check the qrels."
        )
    missing = sorted(set(evaluable) - set(run))
    if missing:
        raise ValueError(f"The run has no results for {len(missing)} judged queries, e.g. {missing[:3]}.")
    run = {q: {d: float(s) for d, s in run[q].items()} for q in evaluable}

    condensed = [(name, k) for name, k in parsed if name.startswith(CONDENSED)]
    values = _per_query_values(run, evaluable, [m for m in parsed if m not in condensed], relevance_cut)
    if condensed:  # the same measures on each ranking with the unjudged documents taken out before the cut
        judged_run = {q: {d: s for d, s in docs.items() if d in evaluable[q]} for q, docs in run.items()}
        inner = [(name[len(CONDENSED) :], k) for name, k in condensed]
        inner_values = _per_query_values(judged_run, evaluable, inner, relevance_cut)
        values.update({f"{CONDENSED}{name}@{k}": inner_values[f"{name}@{k}"] for name, k in inner})
    result: dict = {f"{name}@{k}": float(np.mean(list(values[f"{name}@{k}"].values()))) for name, k in parsed}
    result["n_queries"] = len(evaluable)
    result["n_queries_skipped"] = len(qrels) - len(evaluable)
    result["relevance_cut"] = relevance_cut
    if per_query:
        result["per_query"] = values
    return result


def _per_query_values(
    run: Run, evaluable: Qrels, parsed: list[tuple[str, int]], relevance_cut: int
) -> dict[str, dict[str, float]]:
    """``{metric: {query_id: value}}`` of :func:`evaluate_run` for the plain (not condensed) measures."""
    values: dict[str, dict[str, float]] = {}
    trec_measures = {_TREC_NAMES[name][0].format(k=k) for name, k in parsed if name not in ("mrr", "judged")}
    if trec_measures:
        per_q = pytrec_eval.RelevanceEvaluator(evaluable, trec_measures, relevance_level=relevance_cut).evaluate(run)
        for name, k in parsed:
            if name not in ("mrr", "judged"):
                key = _TREC_NAMES[name][1].format(k=k)
                # pytrec_eval omits queries whose run is empty: they score 0.
                values[f"{name}@{k}"] = {q: per_q.get(q, {}).get(key, 0.0) for q in evaluable}
    if any(name in ("mrr", "judged") for name, _ in parsed):  # rankings by score, ties by document id
        ranked = {q: sorted(docs, key=lambda d: (-docs[d], d)) for q, docs in run.items()}
    for k in sorted({k for name, k in parsed if name == "judged"}):
        values[f"judged@{k}"] = {q: sum(d in evaluable[q] for d in ranked[q][:k]) / k for q in evaluable}
    for k in sorted({k for name, k in parsed if name == "mrr"}):
        # trec_eval's recip_rank has no cut: score the run truncated to its top k.
        top_k = {q: {d: run[q][d] for d in ranked[q][:k]} for q in run}
        per_q = pytrec_eval.RelevanceEvaluator(evaluable, {"recip_rank"}, relevance_level=relevance_cut)
        per_q = per_q.evaluate(top_k)
        values[f"mrr@{k}"] = {q: per_q[q]["recip_rank"] if q in per_q else 0.0 for q in evaluable}
    return values


def run_from_search(query_ids: Sequence[str], scores: np.ndarray, doc_ids: list[list[str]]) -> Run:
    """Turn :meth:`FaissIndex.search` output into a ``{query_id: {doc_id: score}}`` run."""
    return {q: dict(zip(ids, map(float, row))) for q, row, ids in zip(query_ids, scores, doc_ids)}


class RetrievalEvaluator(SentenceEvaluator):
    """Dense retrieval evaluation with a FAISS index and trec_eval metrics, usable as ``evaluator=``.

    At each call the model encodes the corpus (as documents) and the queries (as queries, so prompts and
    ``Router`` towers apply), a FAISS index (exact inner product below 1M passages by default) retrieves the top-k, and
    :func:`evaluate_run` scores the run against graded qrels: nDCG@k with graded gains; MRR@k, Recall@k,
    MAP@k with ``grade >= relevance_cut`` as relevant.

    Args:
        data: a :class:`~md2pr_st.data.RetrievalData` (corpus, queries, qrels).
        metrics: metric names; the first is the primary metric (used by ``load_best_model_at_end``).
        relevance_cut: lowest grade counted relevant by the binary metrics (default 2).
        factory: ``faiss.index_factory`` string; ``"Flat"`` is exact search; ``"auto"`` (default) is exact below
            1M passages and HNSW32 from there, tuned on the evaluated queries (:meth:`FaissIndex.calibrate`: recall@k
            of exact search >= 0.99, or exact search).
        batch_size: encoding batch size.
        name: prefix of the logged metrics (``{name}_ndcg@10``).
        show_progress_bar: show encoding progress (default: shown, as for every long step of md2pr-st).
        index: a :class:`~md2pr_st.index.FaissIndex` already built over ``data.corpus``: a call with the model it
            was built with searches it instead of encoding the corpus again (checked by the model's fingerprint,
            so a model that has trained since is encoded afresh).

    Example:
        >>> from datasets import Dataset
        >>> from sentence_transformers import SentenceTransformer
        >>> from md2pr_st.data import RetrievalData
        >>> from md2pr_st.models import resolve_model_name
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["d1", "d2"], "text": ["Paris is the capital of France.", "Tea."]}),
        ...     queries=Dataset.from_dict({"id": ["q1"], "text": ["What is the capital of France?"]}),
        ...     qrels={"q1": {"d1": 3}},
        ... )
        >>> evaluator = RetrievalEvaluator(data, metrics=["ndcg@10", "mrr@10"], name="toy")
        >>> evaluator(SentenceTransformer(resolve_model_name(None), device="cpu"))
        {'toy_ndcg@10': 1.0, 'toy_mrr@10': 1.0}
    """

    def __init__(
        self,
        data: RetrievalData,
        metrics: Sequence[str] = DEFAULT_METRICS,
        relevance_cut: int = DEFAULT_RELEVANCE_CUT,
        factory: str = "auto",
        batch_size: int = 64,
        name: str = "",
        show_progress_bar: bool | None = True,
        index: FaissIndex | None = None,
    ) -> None:
        super().__init__()
        parse_metrics(metrics)
        check_range("relevance_cut", relevance_cut)
        check_grade("relevance_cut", relevance_cut, (g for d in data.qrels.values() for g in d.values()), data.name)
        if index is not None and len(index) != len(data.corpus):
            raise ValueError(
                f"The index holds {len(index):,} vectors but the corpus has {len(data.corpus):,} passages: build it "
                "over this data's corpus (FaissIndex.from_model(model, data.corpus))."
            )
        self.index = index
        self.data = data
        self.metrics = list(metrics)
        self.relevance_cut = relevance_cut
        self.factory = factory
        self.batch_size = batch_size
        self.name = name
        self.show_progress_bar = show_progress_bar
        self.depth = max(k for _, k in parse_metrics(metrics))
        self.primary_metric = self.metrics[0]
        self.greater_is_better = True
        self.last_result: dict | None = None

    def evaluate(
        self,
        model: SentenceTransformer,
        corpus_embeddings: np.ndarray | None = None,
        index: FaissIndex | None = None,
        calibrate: bool | None = None,
    ) -> tuple[dict, Run]:
        """Retrieve and score; returns ``(result, run)``. Reuses ``index`` or ``corpus_embeddings`` if given, else the
        evaluator's own index when it was built with this very model. With ``factory="auto"`` an index built here is
        tuned on the evaluated queries (:meth:`FaissIndex.calibrate`); one passed in only when ``calibrate``."""
        start = time.perf_counter()
        if index is None and self.index is not None and self.index.model_fingerprint == model_fingerprint(model):
            index = self.index
        calibrate = (index is None) if calibrate is None else calibrate
        if index is None:
            index = FaissIndex.from_model(
                model,
                self.data.corpus,
                self.factory,
                batch_size=self.batch_size,
                show_progress_bar=self.show_progress_bar,
                embeddings=corpus_embeddings,
            )
        query_ids = self.data.queries["id"]
        query_embeddings = encode(model, self.data.queries["text"], "query", self.batch_size, self.show_progress_bar)
        # an index built here with "auto" is tuned on these queries; one passed in is searched as it was set up
        calibration = index.calibrate(query_embeddings, self.depth) if calibrate and self.factory == "auto" else None
        scores, doc_ids = index.search(query_embeddings, self.depth)
        run = run_from_search(query_ids, scores, doc_ids)
        result = evaluate_run(run, self.data.qrels, self.metrics, self.relevance_cut)
        result["corpus_size"] = len(self.data.corpus)
        if calibration is not None:
            result["index_calibration"] = calibration
        result["seconds"] = round(time.perf_counter() - start, 2)
        self.last_result = result
        return result, run

    def __call__(
        self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        result, _ = self.evaluate(model)
        metrics = {metric: result[metric] for metric in self.metrics}
        if output_path is not None:
            write_json(
                Path(output_path) / f"retrieval_evaluation_{self.name or self.data.name}_{epoch}_{steps}.json",
                result,
            )
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    @property
    def description(self) -> str:
        return "Retrieval (FAISS, trec_eval)"


def rerank_run(teacher: Any, data: RetrievalData, run: Run, k: int = 20, show_progress_bar: bool | None = None) -> Run:
    """The run with each query's top-``k`` reordered by the teacher's scores; ranks below ``k`` keep their order.

    ``teacher`` is any scorer (a :class:`~md2pr_st.teacher.Teacher` or a :class:`~md2pr_st.teacher.QrelsScorer`).

    Example:
        >>> from datasets import Dataset
        >>> from md2pr_st.teacher import QrelsScorer
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris.", "Lyon.", "Tea."]}),
        ...     queries=Dataset.from_dict({"id": ["q"], "text": ["capital of france"]}),
        ...     qrels={"q": {"a": 3, "b": 1}},
        ... )
        >>> reranked = rerank_run(QrelsScorer(data), data, {"q": {"c": 0.9, "b": 0.8, "a": 0.7}}, k=2)
        >>> sorted(reranked["q"], key=reranked["q"].get, reverse=True)  # the top 2 (c, b) reordered, a stays third
        ['b', 'c', 'a']
    """
    from md2pr_st.teacher.scoring import score_candidates

    texts = dict(zip(data.corpus["id"], data.corpus["text"]))
    queries = dict(zip(data.queries["id"], data.queries["text"]))
    ranked = {q: sorted(docs, key=docs.__getitem__, reverse=True) for q, docs in run.items()}
    heads = {q: ids[:k] for q, ids in ranked.items()}
    deepest = max((len(ids) for ids in ranked.values()), default=k)
    if deepest < k < len(data.corpus):
        logger.warning(
            "Reranking the top %d, but the run holds at most %d passages per query: only those are reordered and "
            "nothing new can enter the top. Retrieve at least %d (e.g. RetrievalEvaluator metrics up to recall@%d).",
            k,
            deepest,
            k,
            k,
        )
    scores = score_candidates(
        teacher,
        [queries[q] for q in heads],
        [[texts[d] for d in head] for head in heads.values()],
        show_progress_bar=show_progress_bar,
    )
    reranked: Run = {}
    for (q, head), top in zip(heads.items(), scores):
        # The reranked head above everything else: the teacher's logits shifted above the tail's ranks.
        reranked[q] = {d: 1e6 + float(s) for d, s in zip(head, top)}
        reranked[q].update({d: float(len(ranked[q]) - i) for i, d in enumerate(ranked[q][k:])})
    return reranked


def teacher_rerank(
    teacher: Any,
    data: RetrievalData,
    run: Run,
    k: int = 20,
    metrics: Sequence[str] = REPORT_METRICS,
    relevance_cut: int = DEFAULT_RELEVANCE_CUT,
    show_progress_bar: bool | None = None,
) -> dict[str, Any]:
    """Metrics of the student's ``run`` with its top-``k`` reranked by the teacher (:func:`rerank_run`).

    A ceiling for distillation: what the student would score if it ranked its own top-k like the teacher.

    Example:
        >>> from datasets import Dataset
        >>> from md2pr_st.teacher import QrelsScorer
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris.", "Lyon.", "Tea."]}),
        ...     queries=Dataset.from_dict({"id": ["q"], "text": ["capital of france"]}),
        ...     qrels={"q": {"a": 3, "b": 1}},
        ... )
        >>> student_run = {"q": {"c": 0.9, "b": 0.8, "a": 0.7}}  # the worst order
        >>> teacher_rerank(QrelsScorer(data), data, student_run, k=3, metrics=["mrr@1"])["mrr@1"]
        1.0
    """
    reranked = rerank_run(teacher, data, run, k, show_progress_bar)
    result = evaluate_run(reranked, data.qrels, metrics, relevance_cut)
    result["corpus_size"] = len(data.corpus)
    result["rerank_k"] = k
    return result


def paired_bootstrap(
    after: dict[str, float],
    before: dict[str, float],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap confidence interval of the mean per-query difference ``after - before``.

    ``after`` and ``before`` map query ids to a metric's per-query values (``evaluate_run(..., per_query=True)``);
    the queries they share are resampled with replacement ``n_resamples`` times (scipy's ``bootstrap``, percentile
    method, paired), and the ``confidence`` interval of the mean difference is returned with it: a gain whose
    interval holds 0 is within the noise of this query set.

    Example:
        >>> after = {f"q{i}": 0.5 + 0.1 * (i % 2) for i in range(40)}
        >>> before = {f"q{i}": 0.5 for i in range(40)}
        >>> ci = paired_bootstrap(after, before)
        >>> round(ci["mean_diff"], 3), ci["low"] > 0, ci["n"]
        (0.05, True, 40)
    """
    from scipy.stats import bootstrap

    shared = sorted(set(after) & set(before))
    if len(shared) < 2:
        raise ValueError(f"A paired bootstrap needs at least 2 shared queries, got {len(shared)}.")
    diff = np.array([after[q] - before[q] for q in shared], dtype=np.float64)
    if np.all(diff == diff[0]):  # no spread: every resample has the same mean
        return {"mean_diff": float(diff[0]), "low": float(diff[0]), "high": float(diff[0]), "n": len(shared)}
    ci = bootstrap(
        (diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    return {"mean_diff": float(diff.mean()), "low": float(ci.low), "high": float(ci.high), "n": len(shared)}


def format_table(rows: dict[str, dict], metrics: Sequence[str]) -> str:
    """A plain-text table: one row per system, one column per metric (4 decimals)."""
    width = max([len("system")] + [len(name) for name in rows])
    header = f"{'system':<{width}}  " + "  ".join(f"{m:>10}" for m in metrics)
    lines = [header, "-" * len(header)]
    for name, result in rows.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{result[m]:>10.4f}" for m in metrics))
    return "\n".join(lines)
