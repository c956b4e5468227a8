"""The teacher's report: what ``md2pr_teacher.json`` says of a trained teacher, and what there is to distil.

- :func:`training_report`: the training's data, settings, steps and losses, and the record it was made from;
- :func:`same_teacher`: whether a saved teacher was made from a record (then it is reused, not retrained);
- :func:`reranking_gap`: nDCG@10 of the teacher and of the student reranking the same candidate lists of a dev
  split (each query's judged pool), the gap distillation can transfer.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder

from md2pr_st.data import RetrievalData
from md2pr_st.evaluation import evaluate_run
from md2pr_st.index import encode
from md2pr_st.models import DEFAULT_STUDENT_ID, resolve_model_name
from md2pr_st.teacher.cross_encoder import Teacher

logger = logging.getLogger(__name__)

__all__ = ["RECORD_DEFAULTS", "TEACHER_REPORT", "reranking_gap", "same_teacher", "training_report"]

TEACHER_REPORT = "md2pr_teacher.json"
# Settings added after teachers were saved without them: a saved record lacking one had this value.
RECORD_DEFAULTS = {"loss": "bce", "list_size": None, "mined_negatives": 0}


def same_teacher(output_dir: Path, record: dict[str, Any]) -> bool:
    """Whether ``output_dir`` holds a teacher made from ``record`` (and, when ``record`` has a dev split, whose
    report's gap was measured on it); a teacher of other data or settings is reported (and then retrained)."""
    try:
        report = json.loads((output_dir / TEACHER_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    saved = {**RECORD_DEFAULTS, **(report.get("record") or {})}  # a teacher from before a setting existed
    record = json.loads(json.dumps(record, sort_keys=True, default=str))
    differs = sorted(k for k in record if saved.get(k) != record[k])
    if not differs:
        return True
    logger.warning("%s holds a teacher trained with other %s: retraining it.", output_dir, ", ".join(differs))
    return False


def training_report(
    trainer: Any, base_model: Any, train_name: str, rows: int, settings: dict, record: dict, resume: Path | None
) -> dict[str, Any]:
    """What ``md2pr_teacher.json`` says of the training: data, settings, steps, first and last loss, the record."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    keys = (
        "loss",
        "list_size",
        "max_length",
        "epochs",
        "batch_size",
        "learning_rate",
        "random_negatives",
        "mined_negatives",
        "seed",
    )
    return {
        "base_model": str(base_model or f"{DEFAULT_STUDENT_ID} (embedded)"),
        "train": train_name,
        "train_pairs": rows,
        **{key: settings[key] for key in keys},
        "resumed_from": resume.name if resume else None,
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "record": record,
    }


def reranking_gap(
    teacher: str | Path | CrossEncoder,
    student: str | Path | SentenceTransformer | None,
    dev: RetrievalData,
    metric: str = "ndcg@10",
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """nDCG@10 of the teacher and of the student reranking each dev query's judged pool, and their gap.

    Both rerank the same candidates (the documents judged for the query, so every candidate has a grade):
    the teacher by its logit ``t(q, d)``, the student by ``sim(E(q), E(d))``. ``gap = teacher - student``; a
    positive gap is what distillation can transfer.

    Example:
        ::

            >>> reranking_gap("runs/teacher", None, load_rag24("dev"))  # doctest: +SKIP
            {'metric': 'ndcg@10', 'teacher': 0.71, 'student': 0.66, 'gap': 0.05, 'n_queries': 56, ...}
    """
    if not isinstance(teacher, CrossEncoder):
        teacher = CrossEncoder(str(teacher))
    if not isinstance(student, SentenceTransformer):
        student = SentenceTransformer(resolve_model_name(student), device=str(teacher.device))
    scorer = Teacher(teacher, batch_size=batch_size, cache_scores=False)
    queries = dict(zip(dev.queries["id"], dev.queries["text"]))
    row_of = {doc_id: i for i, doc_id in enumerate(dev.corpus["id"])}
    pool_ids = sorted({d for docs in dev.qrels.values() for d in docs})
    pool_texts = dev.corpus.select([row_of[d] for d in pool_ids])["text"]
    text_of = dict(zip(pool_ids, pool_texts))
    pairs = [(qid, did) for qid in queries for did in dev.qrels.get(qid, {})]
    start = time.perf_counter()
    t_scores = scorer.score([(queries[q], text_of[d]) for q, d in pairs], show_progress_bar=show_progress_bar)
    teacher_seconds = time.perf_counter() - start
    q_ids = list(queries)
    q_emb = encode(student, [queries[q] for q in q_ids], "query", batch_size, show_progress_bar)
    d_emb = encode(student, pool_texts, "document", batch_size, show_progress_bar)
    q_row = {q: i for i, q in enumerate(q_ids)}
    d_row = {d: i for i, d in enumerate(pool_ids)}
    s_scores = np.array([float(q_emb[q_row[q]] @ d_emb[d_row[d]]) for q, d in pairs])
    runs: dict[str, dict[str, dict[str, float]]] = {"teacher": {}, "student": {}}
    for (q, d), t, s in zip(pairs, t_scores.tolist(), s_scores.tolist()):
        runs["teacher"].setdefault(q, {})[d] = t
        runs["student"].setdefault(q, {})[d] = s
    results = {name: evaluate_run(run, dev.qrels, [metric]) for name, run in runs.items()}
    return {
        "metric": metric,
        "teacher": round(results["teacher"][metric], 4),
        "student": round(results["student"][metric], 4),
        "gap": round(results["teacher"][metric] - results["student"][metric], 4),
        "n_queries": results["teacher"]["n_queries"],
        "candidates": "judged pool",
        "n_pairs": len(pairs),
        "dev": dev.name,
        "teacher_pairs_per_second": round(len(pairs) / max(teacher_seconds, 1e-9), 1),
    }
