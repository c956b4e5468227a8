"""Precision and recall of false-negative detection on TREC RAG 2024, against UMBRELA judgements.

For each query of a RAG24 split (default: dev, topics the teacher never trained on) the student mines
``--num-candidates`` negatives from the whole corpus with its single best-graded passage as the positive. Every
other passage judged ``grade >= 2`` that shows up among the candidates is a real false negative; unjudged
candidates count as true negatives (RAG24's pools are the top passages of many systems, so an unjudged
passage is rarely relevant; the judged fraction is reported). The teacher scores every candidate once and each
rule flags candidates from the same scores:

- ``dynamic`` (our default, p = 0.1, m_r = max(Q_p(gaps), 0)) and a few other p, with and without the floor;
- a fixed absolute threshold tau on the teacher logit (tau = 0, i.e. sigmoid 0.5, chosen a priori);
- the host library's ``relative_margin = 0.05`` on logits (``activation_fn=Identity``), and on sigmoid
  probabilities (what ``mine_hard_negatives`` does with a default cross-encoder).

The teacher is the cross-encoder trained by :func:`md2pr_st.teacher.train_teacher` on the train topics
(trained here first if ``--teacher`` does not hold one yet).

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/filter_quality.py --teacher runs/teacher_rag24 --output runs/filter_quality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def prf(flags: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flags & truth).sum())
    flagged, positives = int(flags.sum()), int(truth.sum())
    precision = tp / flagged if flagged else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "flagged": flagged,
        "true_positives": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "flagged_fraction": round(flagged / flags.size, 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="runs/teacher_rag24", help="Trained teacher folder (trained if absent).")
    parser.add_argument("--student", default=None, help="Student (default: embedded all-MiniLM-L6-v2).")
    parser.add_argument("--split", default="dev", help="RAG24 split to evaluate on (dev: unseen by the teacher).")
    parser.add_argument("--num-candidates", type=int, default=30, help="Mined candidates per query (ranks 0..K-1).")
    parser.add_argument("--max-seq-length", type=int, default=128, help="Student max tokens.")
    parser.add_argument("--teacher-max-length", type=int, default=128, help="Teacher max tokens per pair.")
    parser.add_argument("--cache-dir", default="runs/embeddings", help="Corpus-embedding cache.")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default="runs/filter_quality", help="Folder for JSON, statistics and PNG.")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder

    from md2pr_st.data import load_rag24, training_pairs
    from md2pr_st.false_negatives import FalseNegativeFilter
    from md2pr_st.mining import mine_hard_negatives
    from md2pr_st.models import resolve_model_name
    from md2pr_st.teacher import TEACHER_REPORT, Teacher, train_teacher
    from md2pr_st.utils import write_json

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    teacher_path = Path(args.teacher)
    if not (teacher_path / TEACHER_REPORT).is_file():
        print(f"Training the teacher into {teacher_path} (train topics)...", file=sys.stderr)
        train_teacher(
            load_rag24("train"),
            teacher_path,
            dev=load_rag24("dev"),
            max_length=args.teacher_max_length,
            epochs=1,
            batch_size=16,
            learning_rate=5e-5,
            random_negatives=1,
            max_pairs=2400,
        )
    teacher_report = json.loads((teacher_path / TEACHER_REPORT).read_text())

    data = load_rag24(args.split)
    pairs = training_pairs(data, min_grade=2, positives="best", skip_queries_without_positive=True)
    student = SentenceTransformer(resolve_model_name(args.student), device="cpu")
    student.max_seq_length = args.max_seq_length
    start = time.perf_counter()
    mined, mining_stats = mine_hard_negatives(
        pairs,
        data.corpus,
        student,
        num_negatives=args.num_candidates,
        range_max=args.num_candidates,
        cache_dir=args.cache_dir,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        with_ids=True,
        return_stats=True,
        show_progress_bar=True,
    )
    mining_seconds = time.perf_counter() - start

    cross_encoder = CrossEncoder(str(teacher_path), max_length=args.teacher_max_length, device="cpu")
    teacher = Teacher(cross_encoder, batch_size=args.batch_size)
    start = time.perf_counter()
    default = FalseNegativeFilter(teacher, "dynamic", num_negatives=4).fit(mined)
    scoring_seconds = time.perf_counter() - start
    decision = default.decide(mined[:])
    positive, candidates = decision["positive_scores"], decision["candidate_scores"]

    grades = [[data.qrels[q].get(d, None) for d in ids] for q, ids in zip(mined["query_id"], mined["negative_ids"])]
    judged = np.array([[g is not None for g in row] for row in grades])
    truth = np.array([[g is not None and g >= 2 for g in row] for row in grades])

    rules: dict[str, dict] = {}

    def evaluate(name: str, flags: np.ndarray, **info) -> None:
        rules[name] = {**info, **prf(flags, truth), "judged_only": prf(flags[judged], truth[judged])}

    for p in (0.05, 0.1, 0.2, 0.3):
        fn_filter = FalseNegativeFilter(teacher, "dynamic", quantile=p, num_negatives=4).fit(mined)
        flags = fn_filter.decide(mined[:])["flags"]
        evaluate(f"dynamic p={p}" + (" (default)" if p == 0.1 else ""), flags, margin=round(fn_filter.margin_, 4))
    for p in (0.05, 0.1, 0.2, 0.3):  # without the floor at 0: exactly a fraction p of the candidates is flagged
        fn_filter = FalseNegativeFilter(teacher, "dynamic", quantile=p, min_margin=None, num_negatives=4).fit(mined)
        flags = fn_filter.decide(mined[:])["flags"]
        evaluate(f"dynamic p={p}, no floor", flags, margin=round(fn_filter.margin_, 4))
    for tau in (-1.0, 0.0, 1.0):
        evaluate(f"absolute tau={tau}", candidates >= tau, threshold=tau)
    evaluate("relative r=0.05 (logits)", candidates > positive[:, None] - np.abs(positive[:, None]) * 0.05)
    sig_p, sig_c = 1 / (1 + np.exp(-positive[:, None])), 1 / (1 + np.exp(-candidates))
    evaluate("relative r=0.05 (sigmoid, host default)", sig_c > sig_p - np.abs(sig_p) * 0.05)
    evaluate("margin m=0 (teacher ranks it above the positive)", candidates >= positive[:, None])

    np.savez(output / "scores.npz", positive=positive, candidates=candidates, truth=truth, judged=judged)
    default.apply(mined.remove_columns(["query_id", "positive_id", "negative_ids"]), fit=False)
    default.save_statistics(output / "filter_statistics.json")
    default.plot(output / "gap_histogram.png")
    result = {
        "split": data.name,
        "queries": len(mined),
        "candidates_per_query": args.num_candidates,
        "candidates": int(truth.size),
        "judged_fraction": round(float(judged.mean()), 4),
        "false_negatives": int(truth.sum()),
        "false_negative_rate": round(float(truth.mean()), 4),
        "student": args.student or "all-MiniLM-L6-v2 (embedded)",
        "student_max_seq_length": args.max_seq_length,
        "teacher": str(teacher_path),
        "teacher_dev": teacher_report.get("dev"),
        "mining_seconds": round(mining_seconds, 1),
        "mining": mining_stats.to_dict(),
        "teacher_scoring_seconds": round(scoring_seconds, 1),
        "rules": rules,
    }
    write_json(output / "filter_quality.json", result)
    print(
        f"{data.name}: {len(mined)} queries x {args.num_candidates} candidates, {result['false_negatives']} real false "
        f"negatives (UMBRELA >= 2; rate {result['false_negative_rate']:.3f}; {result['judged_fraction']:.1%} judged)"
    )
    print("| rule | flagged | precision | recall | F1 |\n|---|---:|---:|---:|---:|")
    for name, r in rules.items():
        extra = f" (m_r = {r['margin']:.3f})" if "margin" in r else ""
        print(f"| {name}{extra} | {r['flagged']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
    return result


if __name__ == "__main__":
    main()
