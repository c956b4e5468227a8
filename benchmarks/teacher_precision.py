"""What bf16 autocast changes in a teacher's outputs: its scores and its attention, against full precision.

A trained cross-encoder (``--teacher``) scores and attends the same (query, passage) pairs twice with
:class:`md2pr_st.teacher.Teacher` at 256 tokens: in full precision (float32) and with ``autocast_dtype="bfloat16"``
(float32 weights, the forward pass under ``torch.autocast``). The pairs: the first 12 dev queries of
cross-validation fold 0 (``quality.folds(3)[0]["dev"]``, queries in id order), each with up to 16 of its judged
passages (in id order): 192 pairs. Written to ``--output`` (JSON; no texts, only numbers and query ids):

- the seconds of each precision's pass over all pairs (median of ``--repeats`` interleaved passes, each precision
  warmed up on one batch first) and their ratio, with the torch thread count and the load average;
- the logits: the largest and the mean absolute difference between the two precisions, next to the standard
  deviation of the full-precision logits (the scale a difference is read against);
- the ranking: Spearman's correlation between the two precisions' scores of each query's passages, median and
  minimum over the queries;
- the attention: for each pair, the mean over query tokens of KL(full precision row || bf16 row) of the
  query-to-passage attention blocks (rows renormalised over passage tokens); median and maximum over the pairs.

    HF_HUB_OFFLINE=1 python benchmarks/teacher_precision.py --teacher runs/strong/fold0/mpnet_mined/teacher \\
        --output benchmarks/results/strong_teacher/bf16_fidelity_fold0.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PRECISIONS = {"fp32": None, "bf16": "bfloat16"}


def dev_pairs(queries: int, per_query: int) -> tuple[list[tuple[str, str]], list[str]]:
    """(query, passage) pairs of fold 0's dev judged pools and the query id of each pair."""
    from quality import folds

    dev = folds(3)[0]["dev"]
    texts = dict(zip(dev.corpus["id"], dev.corpus["text"]))
    query_texts = dict(zip(dev.queries["id"], dev.queries["text"]))
    pairs, query_ids = [], []
    for qid in sorted(query_texts)[:queries]:
        for doc_id in sorted(dev.qrels[qid])[:per_query]:
            pairs.append((query_texts[qid], texts[doc_id]))
            query_ids.append(qid)
    return pairs, query_ids


def cpu_model() -> str:
    """The CPU's model name (Linux), or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def row_kl(p, q) -> float:
    """Mean over rows of KL(p_row || q_row) for two (|q|, |d|) attention blocks."""
    p, q = p.clamp_min(1e-12), q.clamp_min(1e-12)
    return float((p * (p.log() - q.log())).sum(dim=1).mean())


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from md2pr_st.teacher import TEACHER_REPORT, Teacher
    from md2pr_st.utils import write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="a trained cross-encoder folder (or Hub id)")
    parser.add_argument("--output", required=True, help="JSON file for the numbers")
    parser.add_argument("--queries", type=int, default=12, help="dev queries of fold 0 (in id order)")
    parser.add_argument("--per-query", type=int, default=16, help="judged passages per query (in id order)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per precision, interleaved")
    args = parser.parse_args(argv)

    pairs, query_ids = dev_pairs(args.queries, args.per_query)
    teachers = {
        name: Teacher(args.teacher, max_length=args.max_length, batch_size=args.batch_size, device="cpu",
                      cache_scores=False, autocast_dtype=dtype)
        for name, dtype in PRECISIONS.items()
    }  # fmt: skip
    load_before = os.getloadavg()[0]
    for teacher in teachers.values():  # warm-up: eager attention switched on, kernels and allocator warmed
        teacher.score_and_attend(pairs[: args.batch_size])
    seconds: dict[str, list[float]] = {name: [] for name in teachers}
    outputs = {}
    for _ in range(args.repeats):
        for name, teacher in teachers.items():
            start = time.perf_counter()
            outputs[name] = teacher.score_and_attend(pairs)
            seconds[name].append(time.perf_counter() - start)
        last = {name: round(v[-1], 1) for name, v in seconds.items()}
        print(f"pass done: {last}", file=sys.stderr)

    full, bf16 = outputs["fp32"], outputs["bf16"]
    s_full, s_bf16 = full.scores.double().numpy(), bf16.scores.double().numpy()
    diff = np.abs(s_full - s_bf16)
    ids = np.array(query_ids)
    spearman = {
        qid: float(spearmanr(s_full[ids == qid], s_bf16[ids == qid]).statistic) for qid in sorted(set(query_ids))
    }
    kl = [row_kl(a.weights, b.weights) for a, b in zip(full.attention, bf16.attention)]
    median_s = {name: statistics.median(v) for name, v in seconds.items()}
    report = Path(args.teacher) / TEACHER_REPORT
    result = {
        "teacher": str(args.teacher),
        "teacher_dev": json.loads(report.read_text()).get("dev") if report.is_file() else None,
        "pairs": len(pairs),
        "queries": len(spearman),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "device": "cpu",
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        "seconds": {name: [round(s, 2) for s in v] for name, v in seconds.items()},
        "median_seconds": {name: round(s, 2) for name, s in median_s.items()},
        "speedup_bf16_over_fp32": round(median_s["fp32"] / median_s["bf16"], 3),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "logit_std_fp32": float(s_full.std()),
        "spearman_per_query_median": float(np.median(list(spearman.values()))),
        "spearman_per_query_min": float(min(spearman.values())),
        "spearman_per_query": spearman,
        "attention_row_kl_median": float(np.median(kl)),
        "attention_row_kl_max": float(np.max(kl)),
    }
    write_json(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("spearman_per_query", "teacher_dev")}, indent=2))
    return result


if __name__ == "__main__":
    main()
