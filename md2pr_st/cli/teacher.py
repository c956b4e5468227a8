"""``md2pr teacher``: stage 0 alone, the cross-encoder teacher trained on the train split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from md2pr_st.cli.arguments import DataArguments, TeacherArguments
from md2pr_st.outputs import check_output
from md2pr_st.teacher import TEACHER_REPORT, train_teacher


def run_teacher(data_args: DataArguments, args: TeacherArguments, trainer_args: dict | None = None) -> dict[str, Any]:
    """Train the teacher on the train split and report the teacher-vs-student nDCG@10 gap on dev;
    ``trainer_args``: other options of the host's CrossEncoderTrainingArguments."""
    inputs = {"--dataset": data_args.dataset, "--base_model": args.base_model, "--student": args.student}
    check_output(args.output_dir, kind="teacher", overwrite=args.overwrite, option="--output_dir", inputs=inputs)
    train, dev = data_args.load("train"), data_args.load("dev")
    path = train_teacher(
        train,
        args.output_dir,
        base_model=args.base_model,
        dev=dev,
        student=args.student,
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        random_negatives=args.random_negatives,
        mined_negatives=args.mined_negatives,
        max_pairs=args.max_pairs,
        loss=args.loss,
        list_size=args.list_size,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
        training_args=trainer_args,
    )
    report = json.loads((Path(path) / TEACHER_REPORT).read_text(encoding="utf-8"))
    gap = report.get("dev", {})
    if gap:
        print(
            f"Teacher {path}: dev {gap['metric']} reranking the judged pools: teacher {gap['teacher']:.4f}, "
            f"student {gap['student']:.4f}, gap {gap['gap']:+.4f}"
        )
    return report
