"""Our mining + false-negative filter vs ``sentence_transformers.util.mine_hard_negatives`` on RAG24 train topics.

Both sides get the same student (all-MiniLM-L6-v2), the same corpus (all 6,011 RAG24 passages), the same
training pairs (each topic's best-graded passage as the positive), the same cross-encoder teacher (logits:
``activation_fn=Identity``) and ``relative_margin = r``; 4 negatives per query. The host retrieves
``range_max + 1`` passages (``range_max = 10 * num_negatives + 1``, its default with a margin), cross-encodes
all of them, removes the positive and the candidates above ``t(q, d+) - |t(q, d+)| r`` and keeps the best 4 by
cross-encoder score. We mine the same ``range_max`` candidates (positives removed), fit a
:class:`~md2pr_st.false_negatives.FalseNegativeFilter` (which scores every candidate once) and keep 4.

Timed in the same process, one after the other: a cold run (corpus encoded from scratch on both sides) and a
warm run (both read their cached corpus embeddings; the cross-encoder runs again on both sides, ours with an
empty score cache). Overlap of the kept negatives is ``|ours ∩ host| / 4`` averaged over queries, for our
relative rule (refill by teacher score, the host's choice, and by mining rank) and for our dynamic rule.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/mining_vs_host.py --teacher runs/teacher_rag24 --topics 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="runs/teacher_rag24", help="Cross-encoder folder (see filter_quality).")
    parser.add_argument("--topics", type=int, default=40, help="Number of RAG24 train topics (in split order).")
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--relative-margin", type=float, default=0.05)
    parser.add_argument("--max-seq-length", type=int, default=128, help="Student max tokens.")
    parser.add_argument("--teacher-max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument(
        "--corpus-size", type=int, default=0, help="0: all passages; N: the topics' judged pools, filled up to N."
    )
    parser.add_argument("--no-warm", action="store_true", help="Skip the warm (cached embeddings) runs.")
    parser.add_argument("--output", default="runs/mining_vs_host.json")
    args = parser.parse_args(argv)

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.util import mine_hard_negatives as host_mine

    from md2pr_st.data import load_rag24, training_pairs
    from md2pr_st.false_negatives import FalseNegativeFilter
    from md2pr_st.mining import mine_hard_negatives
    from md2pr_st.models import resolve_model_name
    from md2pr_st.teacher import Teacher
    from md2pr_st.utils import write_json

    data = load_rag24("train")
    pairs = training_pairs(data, min_grade=2, positives="best", skip_queries_without_positive=True)
    pairs = pairs.select(range(min(args.topics, len(pairs))))
    host_pairs = pairs.select_columns(["query", "positive"])
    corpus = data.corpus
    if args.corpus_size:
        pools = {d for q in pairs["query_id"] for d in data.qrels[q]}
        rows = [i for i, d in enumerate(data.corpus["id"]) if d in pools]
        rows += [i for i in range(len(data.corpus)) if i not in set(rows)][: max(0, args.corpus_size - len(rows))]
        corpus = data.corpus.select(sorted(rows))
    corpus_texts = list(corpus["text"])
    n = args.num_negatives
    range_max = 10 * n + 1  # the host's default with a margin: range_min + 10 * num_negatives + max_positives

    student = SentenceTransformer(resolve_model_name(None), device="cpu")
    student.max_seq_length = args.max_seq_length

    def host_run(cache_folder: str) -> tuple[Dataset, float]:
        ce = CrossEncoder(
            args.teacher, max_length=args.teacher_max_length, activation_fn=torch.nn.Identity(), device="cpu"
        )
        start = time.perf_counter()
        out = host_mine(
            host_pairs,
            student,
            corpus=corpus_texts,
            cross_encoder=ce,
            relative_margin=args.relative_margin,
            num_negatives=n,
            sampling_strategy="top",
            output_format="n-tuple",
            batch_size=args.batch_size,
            use_faiss=True,
            cache_folder=cache_folder,
            verbose=False,
        )
        return out, time.perf_counter() - start

    def our_run(cache_dir: str) -> tuple[Dataset, Dataset, FalseNegativeFilter, float]:
        teacher = Teacher(CrossEncoder(args.teacher, max_length=args.teacher_max_length, device="cpu"))
        teacher.batch_size = args.batch_size
        start = time.perf_counter()
        mined = mine_hard_negatives(
            pairs.select_columns(["query", "positive", "positive_id"]),
            corpus,
            student,
            num_negatives=range_max,
            range_max=range_max,
            cache_dir=cache_dir,
            chunk_size=args.chunk_size,
            batch_size=args.batch_size,
            show_progress_bar=True,
        )
        fn_filter = FalseNegativeFilter(
            teacher, "relative", relative_margin=args.relative_margin, num_negatives=n, refill_order="teacher"
        )
        kept = fn_filter.apply(mined)
        return mined, kept, fn_filter, time.perf_counter() - start

    work = Path(tempfile.mkdtemp(prefix="md2pr_bench_"))
    try:
        print("host, cold ...", file=sys.stderr)
        host_out, host_cold = host_run(str(work / "host_cache"))
        print(f"host cold: {host_cold:.1f}s; ours, cold ...", file=sys.stderr)
        mined, ours_out, fn_filter, ours_cold = our_run(str(work / "our_cache"))
        print(f"ours cold: {ours_cold:.1f}s", file=sys.stderr)
        warm = {}
        if not args.no_warm:
            _, host_warm = host_run(str(work / "host_cache"))
            *_, ours_warm = our_run(str(work / "our_cache"))
            warm = {"host_seconds": round(host_warm, 1), "ours_seconds": round(ours_warm, 1)}
            warm["ratio_ours_over_host"] = round(ours_warm / host_warm, 3)
            print(f"warm: host {host_warm:.1f}s, ours {ours_warm:.1f}s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def negatives_by_query(dataset: Dataset) -> dict[str, set[str]]:
        cols = [f"negative_{j}" for j in range(1, n + 1)]
        return {row["query"]: {row[c] for c in cols} for row in dataset}

    host_neg = negatives_by_query(host_out)

    def overlap(ours: Dataset) -> dict:
        ours_neg = negatives_by_query(ours)
        common = sorted(set(host_neg) & set(ours_neg))
        shares = [len(host_neg[q] & ours_neg[q]) / n for q in common]
        return {
            "queries_compared": len(common),
            "mean_overlap": round(float(np.mean(shares)), 4) if shares else None,
            "identical_rows": sum(s == 1.0 for s in shares),
            "queries_only_host": len(set(host_neg) - set(ours_neg)),
            "queries_only_ours": len(set(ours_neg) - set(host_neg)),
        }

    teacher = fn_filter.teacher  # its score cache holds every pair: the variants below cost no teacher time
    variants = {
        "relative, refill by teacher score": overlap(ours_out),
        "relative, refill by mining rank": overlap(
            FalseNegativeFilter(teacher, "relative", relative_margin=args.relative_margin, num_negatives=n).apply(
                mined
            )
        ),
    }
    dynamic = FalseNegativeFilter(teacher, "dynamic", num_negatives=n)
    variants["dynamic (p=0.1), refill by mining rank"] = overlap(dynamic.apply(mined))
    dynamic_t = FalseNegativeFilter(teacher, "dynamic", num_negatives=n, refill_order="teacher")
    variants["dynamic (p=0.1), refill by teacher score"] = overlap(dynamic_t.apply(mined))
    result = {
        "topics": len(pairs),
        "corpus": len(corpus_texts),
        "num_negatives": n,
        "candidates_per_query": range_max,
        "relative_margin": args.relative_margin,
        "student_max_seq_length": args.max_seq_length,
        "teacher": args.teacher,
        "teacher_max_length": args.teacher_max_length,
        "cold": {
            "host_seconds": round(host_cold, 1),
            "ours_seconds": round(ours_cold, 1),
            "ratio_ours_over_host": round(ours_cold / host_cold, 3),
        },
        "warm": warm,
        "rows": {"host": len(host_out), "ours": len(ours_out)},
        "flagged": {
            "relative (ours)": fn_filter.statistics["rounds"][-1]["flagged"],
            "dynamic (ours)": dynamic.statistics["rounds"][-1]["flagged"],
            "dynamic margin": dynamic.margin_,
        },
        "overlap_with_host": variants,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(args.output, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
