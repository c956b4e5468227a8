"""``md2pr train``: one student training stage with MD2PRLoss on a filtered ``datasets`` folder."""

from __future__ import annotations

import json
from pathlib import Path

from md2pr_st.cli.arguments import LossArguments, TrainArguments


def run_train(args: TrainArguments, loss_args: LossArguments | None = None, trainer_args: dict | None = None) -> Path:
    """Train a student with MD2PRLoss on a filtered dataset folder (resumes from its last checkpoint);
    ``trainer_args``: other options of the host's SentenceTransformerTrainingArguments."""
    from md2pr_st import distributed
    from md2pr_st.data import load_rows
    from md2pr_st.outputs import check_output
    from md2pr_st.student import train_student
    from md2pr_st.teacher import Teacher

    folder = Path(args.input)
    dataset = load_rows(folder, "--input", "Make one with `md2pr mine` and `md2pr filter`.")  # memory-mapped
    loss_args = loss_args or LossArguments()
    if loss_args.beta > 0 and args.teacher is None:
        raise ValueError("The word-level loss (beta > 0) needs an online teacher: pass --teacher, or --beta 0.")
    if distributed.is_main():
        check_output(args.output_dir, overwrite=args.overwrite, option="--output_dir")
    if len(dataset) == 0:
        raise ValueError(f"--input {folder} has 0 rows: nothing to train on.{_filter_counts(folder)}")
    teacher = Teacher(args.teacher, max_length=args.teacher_max_length, device=args.device) if args.teacher else None
    margin, threshold = args.false_negative_margin, args.false_negative_threshold
    stats_file = folder / "md2pr_filter.json"  # written by md2pr filter
    if margin is None and threshold is None and stats_file.is_file():
        last = (json.loads(stats_file.read_text(encoding="utf-8")).get("rounds") or [{}])[-1]
        if last.get("action") == "mask":
            margin, threshold = last.get("margin"), last.get("threshold")
            criteria = [
                f"margin {margin:g}" if margin is not None else "",
                f"threshold {threshold:g}" if threshold is not None else "",
            ]
            print(
                f"{folder} was filtered with action='mask': masking with its {' and '.join(c for c in criteria if c)} in L_c"
            )
    path, _ = train_student(
        args.model,
        dataset,
        args.output_dir,
        loss_args,
        teacher=teacher,
        false_negative_margin=margin,
        false_negative_threshold=threshold,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_seq_length=args.max_seq_length,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
        training_args=trainer_args,
    )
    if distributed.is_main():
        print(f"Saved the student to {path}")
    return path


def _filter_counts(folder: Path) -> str:
    """What ``md2pr filter`` did to the rows, from its statistics in ``folder`` (empty when there are none)."""
    try:
        last = json.loads((folder / "md2pr_filter.json").read_text(encoding="utf-8"))["rounds"][-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""
    return (
        f" md2pr filter flagged {last.get('flagged')} of {last.get('candidates_scored')} candidates and dropped "
        f"{last.get('dropped_rows')} rows (rule {last.get('rule')}): loosen the rule, use --action mask, or mine more "
        "candidates."
    )
