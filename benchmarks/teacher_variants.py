"""How much does each way of training the teacher lead the students on dev? Teacher variants on one fold.

The quality grid (``quality.py``) distils one teacher per fold: a cross-encoder on all-MiniLM-L6-v2, trained on
the fold's train topics with the host's ``BinaryCrossEntropyLoss`` at 256 tokens for one epoch (``bce256``). This
script trains other teachers on the same pairs (the host's pairwise and listwise cross-encoder losses, more
epochs, longer inputs) and measures each one's lead over both regimes' starting students on the fold's dev topics:
teacher and student rerank each dev query's judged pool (:func:`md2pr_st.teacher.reranking_gap`), nDCG@10.

One folder per variant (``<output>/fold<f>/<variant>``, a plain ``CrossEncoder`` with ``md2pr_teacher.json``), and
``gaps.json`` once both gaps are measured; finished variants (same settings) are skipped, a killed training resumes
from its last checkpoint. ``bce256`` is the grid's own teacher (``<quality>/fold<f>/teacher``), read, never trained
here: run ``quality.py`` first.

    HF_HUB_OFFLINE=1 python benchmarks/teacher_variants.py --output runs/teachers --quality runs/quality \\
        --variants bce256,lambda256,ranknet256 --fold 0
    HF_HUB_OFFLINE=1 python benchmarks/teacher_variants.py --output runs/teachers --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from quality import folds, student_for, write_json

# name -> train_teacher settings; every variant: the embedded all-MiniLM-L6-v2 backbone, learning rate 5e-5, seed 13,
# the fold's train pairs (judged pairs + 2 random negatives per query), 16 pairs per step at most (the ranking
# losses: 2 lists of up to 8 passages of a query).
VARIANTS = {
    "bce256": dict(loss="bce", max_length=256, epochs=1.0),
    "lambda256": dict(loss="lambda", list_size=8, max_length=256, epochs=1.0),
    "ranknet256": dict(loss="ranknet", list_size=8, max_length=256, epochs=1.0),
    "listmle256": dict(loss="listmle", list_size=8, max_length=256, epochs=1.0),
    "bce256_2ep": dict(loss="bce", max_length=256, epochs=2.0),
    "bce384": dict(loss="bce", max_length=384, epochs=1.0),
}


def variant(output: Path, quality: Path, fold: int, name: str, splits) -> dict:
    """Train (or reuse) the variant and measure its dev gap to both regimes' students; kept in ``gaps.json``."""
    from md2pr_st.teacher import TEACHER_REPORT, reranking_gap, train_teacher

    folder = output / f"fold{fold}" / name
    settings = VARIANTS[name]
    if (folder / "gaps.json").is_file():
        done = json.loads((folder / "gaps.json").read_text())
        if done.get("settings") == settings:
            return done
    start = time.perf_counter()
    if name == "bce256":  # the quality grid's teacher
        path = grid_teacher(quality, fold, settings)
    else:
        path = train_teacher(splits["train"], folder / "teacher", dev=splits["dev"], learning_rate=5e-5, seed=13,
                             **settings)  # fmt: skip
    report = json.loads((Path(path) / TEACHER_REPORT).read_text())
    gaps = {"A": report["dev"]}  # train_teacher measured it against the default student: regime A's
    measured = quality / "B" / f"fold{fold}" / "teacher_gap.json"  # quality.py --teacher-gaps, for its teacher
    if name == "bce256" and measured.is_file():
        gaps["B"] = json.loads(measured.read_text())
    else:
        print(f"{name}: dev gap against regime B's student", file=sys.stderr, flush=True)
        gaps["B"] = reranking_gap(path, student_for(quality, "B"), splits["dev"], show_progress_bar=True)
    result = {
        "variant": name,
        "fold": fold,
        "settings": settings,
        "teacher": _shown(Path(path)),
        "train_seconds": report.get("train_seconds"),
        "steps": report.get("steps"),
        "first_loss": report.get("first_loss"),
        "last_loss": report.get("last_loss"),
        "gaps": gaps,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(folder / "gaps.json", result)
    return result


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (what the results files show)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def grid_teacher(quality: Path, fold: int, settings: dict) -> Path:
    """The quality grid's teacher of ``fold``, checked to be ``settings`` (at the learning rate of every variant)."""
    from md2pr_st.teacher import TEACHER_REPORT

    path = quality / f"fold{fold}" / "teacher"
    try:
        saved = json.loads((path / TEACHER_REPORT).read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path} holds no trained teacher ({error}): run quality.py on fold {fold} first.") from None
    wanted = {**settings, "learning_rate": 5e-5}
    differs = {k: saved.get(k, "bce" if k == "loss" else None) for k in wanted}
    if differs != wanted:
        raise SystemExit(f"{path} was trained with {differs}, not {wanted}: it is not the bce256 variant.")
    return path


def report(output: Path) -> str:
    """A markdown table of every finished variant: its dev nDCG@10 and its lead over each regime's student."""
    rows = [json.loads(p.read_text()) for p in sorted(output.glob("fold*/*/gaps.json"))]
    lines = [
        "| fold | variant | loss | passages per list | tokens | epochs | steps | teacher dev nDCG@10 | lead over A "
        "(6 layers) | lead over B (3 layers) | train min |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, a, b = r["settings"], r["gaps"]["A"], r["gaps"]["B"]
        minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
        lines.append(
            f"| {r['fold']} | {r['variant']} | {s['loss']} | {s.get('list_size', '-')} | {s['max_length']} "
            f"| {s['epochs']:g} | {r['steps']} | {a['teacher']:.4f} | {a['gap']:+.4f} | {b['gap']:+.4f} | {minutes} |"
        )
    table = "\n".join(lines) + "\n"
    output.mkdir(parents=True, exist_ok=True)
    (output / "teacher_variants.md").write_text(table, encoding="utf-8")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/teachers")
    parser.add_argument("--quality", default="runs/quality", help="the quality grid's folder (its teachers, students)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--k", type=int, default=3, help="cross-validation folds (as in quality.py)")
    parser.add_argument("--variants", default="bce256,lambda256")
    parser.add_argument("--report", action="store_true", help="only tabulate the finished variants")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    output, quality = Path(args.output), Path(args.quality)
    if not args.report:
        splits = folds(args.k)[args.fold]
        for name in names:
            result = variant(output, quality, args.fold, name, splits)
            print(f"{name}: lead A {result['gaps']['A']['gap']:+.4f}, B {result['gaps']['B']['gap']:+.4f}", flush=True)
    print(report(output))


if __name__ == "__main__":
    main()
