"""Precision and recall of every false-negative rule on TREC RAG 2024, against UMBRELA judgements.

For each query of a RAG24 split (default: the dev topics of cross-validation fold 0, which the fold's teacher never
trained on) the student mines ``--num-candidates`` negatives from the whole corpus with the query's single
best-graded passage as the positive. Every other passage judged ``grade >= 2`` that shows up among the candidates
is a real false negative; unjudged candidates count as true negatives (RAG24's pools are the top passages of many
systems, so an unjudged passage is rarely relevant). Precision on the judged candidates alone is reported too, as
a bound that does not rest on that assumption. The teacher scores every candidate once
(:meth:`~md2pr_st.false_negatives.FalseNegativeFilter.score`) and each rule flags candidates from the same scores:

- ``dynamic`` (the former default, p = 0.1, m_r = max(Q_p(gaps), 0)) and other p, with and without the floor:
  a quantile of the gaps, so the flagged share is p whatever the candidates are;
- ``positives`` (the default since these numbers: theta_r = Q_p of the positives' scores, p = 0.5) for several p,
  ``mixture`` and ``positives_mixture`` (a two-component mixture of the candidates' scores): thresholds whose
  flagged share follows the data;
- a fixed threshold tau on the teacher logit, the fixed margin m = 0, and the host library's
  ``relative_margin = 0.05`` on logits and on sigmoid probabilities (what ``mine_hard_negatives`` does with a
  default cross-encoder); and flagging every candidate, the baseline any rule's F1 must beat when false negatives
  are as common as in RAG24's dense pools.

"kept negatives clean" is the share of real negatives among the candidates a rule leaves as negatives.

F1 comes with a 95% bootstrap interval over queries (queries resampled with replacement, 1,000 times), and so
does its difference to the former default rule, dynamic p = 0.1 (paired: the same resamples for every rule). The
teacher is a cross-encoder trained on the split's train topics (trained here first, on the fold's train topics,
if ``--teacher`` does not hold one yet).

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/filter_quality.py --teacher runs/teachers/f0 --fold 0 \\
        --output runs/filter_quality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def prf(flags: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall, F1 and the flagged share of boolean ``flags`` against ``truth`` (same shape)."""
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
        "flagged_fraction": round(flagged / flags.size, 4) if flags.size else 0.0,
        # the share of real negatives among the candidates left as negatives (negative predictive value)
        "kept_clean": round(1 - (positives - tp) / (flags.size - flagged), 4) if flags.size > flagged else None,
    }


def f1_resamples(flags: np.ndarray, truth: np.ndarray, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """F1 over ``samples`` resamples of the queries (rows of ``flags`` / ``truth``) with replacement. The same seed
    draws the same resamples for every rule, so differences between rules are paired."""
    rng = np.random.default_rng(seed)
    tp, flagged, positives = (flags & truth).sum(1), flags.sum(1), truth.sum(1)
    values = np.empty(samples)
    for s in range(samples):
        pick = rng.integers(0, len(flags), len(flags))
        t, f, p = tp[pick].sum(), flagged[pick].sum(), positives[pick].sum()
        values[s] = 2 * t / (f + p) if f + p else 0.0  # F1 = 2 TP / (flagged + positives)
    return values


def ci95(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in np.quantile(values, [0.025, 0.975])]


DEFAULT_RULE = "dynamic p=0.1 (default)"


def rule_flags(scored, positive: np.ndarray, candidates: np.ndarray) -> dict[str, tuple[np.ndarray, dict]]:
    """Every rule's flags on the scored candidates, with the rule's fitted margin / threshold."""
    from md2pr_st.false_negatives import FalseNegativeFilter

    settings: list[tuple[str, str, dict]] = []
    for p in (0.05, 0.1, 0.2, 0.3):
        settings.append((f"dynamic p={p}" + (" (default)" if p == 0.1 else ""), "dynamic", {"quantile": p}))
    for p in (0.1, 0.2):  # without the floor at 0: exactly a share p of the candidates is flagged
        settings.append((f"dynamic p={p}, no floor", "dynamic", {"quantile": p, "min_margin": None}))
    for p in (0.25, 0.5, 0.75):
        settings.append((f"positives p={p}", "positives", {"quantile": p}))
    settings.append(("positives p=0.5, no floor", "positives", {"quantile": 0.5, "min_margin": None}))
    for rule in ("mixture", "positives_mixture"):
        settings.append((rule, rule, {}))
        settings.append((f"{rule}, no floor", rule, {"min_margin": None}))
    for tau in (-1.0, 0.0, 1.0):
        settings.append((f"absolute tau={tau}", "absolute", {"threshold": tau}))
    settings.append(("margin m=0 (teacher ranks it at or above the positive)", "margin", {"margin": 0.0}))
    settings.append(("relative r=0.05 (logits)", "relative", {"relative_margin": 0.05}))

    out = {"flag every candidate (baseline)": (np.ones_like(candidates, dtype=bool), {})}
    for name, rule, kwargs in settings:
        fn_filter = FalseNegativeFilter(None, rule, num_negatives=1, **kwargs).fit(scored)
        stats = fn_filter.statistics["rounds"][-1]
        info = {k: round(stats[k], 4) for k in ("margin", "threshold") if stats.get(k) is not None}
        out[name] = (fn_filter.mapper().flags(positive, candidates), info)
    # The host's relative margin on sigmoid probabilities, outside the library's rules (strict >, as the host).
    sig_p, sig_c = 1 / (1 + np.exp(-positive[:, None])), 1 / (1 + np.exp(-candidates))
    out["relative r=0.05 (sigmoid, host default)"] = (sig_c > sig_p - np.abs(sig_p) * 0.05, {})
    return out


def load_split(args: argparse.Namespace):
    """The evaluated split and the train split of the same topic partition."""
    from md2pr_st.data import cross_validation_folds, load_rag24

    if args.fold < 0:
        return load_rag24(args.split), load_rag24("train")
    fold = cross_validation_folds(load_rag24("all"), k=args.folds)[args.fold]
    return fold[args.split], fold["train"]


def ensure_teacher(args: argparse.Namespace, train, dev) -> dict:
    """The teacher's report, after training it on ``train`` when ``--teacher`` holds none."""
    from md2pr_st.teacher import TEACHER_REPORT, train_teacher

    teacher_path = Path(args.teacher)
    if not (teacher_path / TEACHER_REPORT).is_file():
        print(f"Training the teacher into {teacher_path} ({train.name})...", file=sys.stderr)
        train_teacher(train, teacher_path, dev=dev, max_length=args.teacher_max_length, epochs=1, batch_size=16)
    return json.loads((teacher_path / TEACHER_REPORT).read_text())


def mine_and_score(args: argparse.Namespace, data):
    """Mined candidates of ``data`` (with ids) teacher-scored, and timings; scores cached in the output folder."""
    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder

    from md2pr_st.data import training_pairs
    from md2pr_st.false_negatives import FalseNegativeFilter
    from md2pr_st.mining import mine_hard_negatives
    from md2pr_st.models import resolve_model_name
    from md2pr_st.teacher import Teacher

    cached = Path(args.output) / "scored"
    if cached.is_dir():  # a rerun (e.g. after a change of the rules) reuses the mining and the teacher scores
        return load_from_disk(str(cached)), {}
    pairs = training_pairs(data, min_grade=2, positives="best", skip_queries_without_positive=True)
    # Mining excludes the ids in `exclude_ids` (every judged positive): keep only the best one out, so the other
    # judged positives can come back as candidates, the real false negatives to detect.
    pairs = pairs.remove_columns("exclude_ids")
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
    timings = {"mining_seconds": round(time.perf_counter() - start, 1), "mining": mining_stats.to_dict()}
    cross_encoder = CrossEncoder(args.teacher, max_length=args.teacher_max_length, device="cpu")
    teacher = Teacher(cross_encoder, batch_size=args.batch_size, autocast_dtype=args.teacher_autocast or None)
    start = time.perf_counter()
    scored = FalseNegativeFilter(teacher, show_progress_bar=True).score(mined)
    timings["teacher_scoring_seconds"] = round(time.perf_counter() - start, 1)
    scored.save_to_disk(str(cached))
    return load_from_disk(str(cached)), timings


def markdown(result: dict) -> str:
    lines = [
        f"{result['split']}: {result['queries']} queries x {result['candidates_per_query']} candidates, "
        f"{result['false_negatives']} real false negatives (UMBRELA >= 2; rate {result['false_negative_rate']:.3f}; "
        f"{result['judged_fraction']:.1%} of candidates judged)",
        "",
        "| rule | m_r / theta_r | flagged share | precision | recall | F1 [95% CI] | F1 - default's [95% CI] "
        "| precision (judged only) | kept negatives clean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rules"].items():
        criteria = ", ".join(f"{'m' if k == 'margin' else 'theta'} = {v:.3f}" for k, v in r["criteria"].items())
        ci = "[{:.3f}, {:.3f}]".format(*r["f1_ci95"])
        delta = "[{:+.3f}, {:+.3f}]".format(*r["f1_minus_default_ci95"])
        lines.append(
            f"| {name} | {criteria} | {r['flagged_fraction']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['f1']:.3f} {ci} | {delta} | {r['judged_only']['precision']:.3f} | "
            + ("-" if r["kept_clean"] is None else f"{r['kept_clean']:.3f}")
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="runs/teacher_rag24", help="Trained teacher folder (trained if absent).")
    parser.add_argument("--student", default=None, help="Student (default: embedded all-MiniLM-L6-v2).")
    parser.add_argument("--fold", type=int, default=0, help="Cross-validation fold (-1: the fixed rag24 split).")
    parser.add_argument("--folds", type=int, default=3, help="Number of cross-validation folds.")
    parser.add_argument("--split", default="dev", help="Split evaluated (dev: topics unseen by the teacher).")
    parser.add_argument("--num-candidates", type=int, default=30, help="Mined candidates per query (ranks 0..K-1).")
    parser.add_argument("--max-seq-length", type=int, default=128, help="Student max tokens.")
    parser.add_argument("--teacher-max-length", type=int, default=256, help="Teacher max tokens per pair.")
    parser.add_argument("--teacher-autocast", default="", help="'bfloat16': score under bf16 autocast.")
    parser.add_argument("--cache-dir", default="runs/embeddings", help="Corpus-embedding cache.")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default="runs/filter_quality", help="Folder for JSON, statistics and PNG.")
    args = parser.parse_args(argv)

    from md2pr_st.false_negatives import FalseNegativeFilter
    from md2pr_st.utils import write_json

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    data, train = load_split(args)
    teacher_report = ensure_teacher(args, train, data)
    scored, timings = mine_and_score(args, data)
    scores = np.asarray(scored["scores"], dtype=np.float64)
    positive, candidates = scores[:, 0], scores[:, 1:]
    grades = [[data.qrels[q].get(d) for d in ids] for q, ids in zip(scored["query_id"], scored["negative_ids"])]
    judged = np.array([[g is not None for g in row] for row in grades])
    truth = np.array([[g is not None and g >= 2 for g in row] for row in grades])

    rules = {}
    flags_of = rule_flags(scored, positive, candidates)
    reference = f1_resamples(flags_of[DEFAULT_RULE][0], truth)
    for name, (flags, criteria) in flags_of.items():
        resampled = f1_resamples(flags, truth)
        rules[name] = {
            "criteria": criteria,
            **prf(flags, truth),
            "f1_ci95": ci95(resampled),
            "f1_minus_default_ci95": ci95(resampled - reference),
            "judged_only": prf(flags[judged], truth[judged]),
        }
    default = FalseNegativeFilter(None, "dynamic", num_negatives=4)
    default.apply(scored.remove_columns(["query_id", "positive_id", "negative_ids"]))
    default.save_statistics(output / "filter_statistics.json")
    default.plot(output / "gap_histogram.png")
    result = {
        "split": data.name,
        "queries": len(scored),
        "candidates_per_query": candidates.shape[1],
        "candidates": int(truth.size),
        "judged_fraction": round(float(judged.mean()), 4),
        "false_negatives": int(truth.sum()),
        "false_negative_rate": round(float(truth.mean()), 4),
        "student": args.student or "all-MiniLM-L6-v2 (embedded)",
        "student_max_seq_length": args.max_seq_length,
        "teacher": str(args.teacher),
        "teacher_max_length": args.teacher_max_length,
        "teacher_dev": teacher_report.get("dev"),
        **timings,
        "rules": rules,
    }
    write_json(output / "filter_quality.json", result)
    table = markdown(result)
    (output / "filter_quality.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return result


if __name__ == "__main__":
    main()
