"""``md2pr train``: one student training stage with MD2PRLoss on a filtered ``datasets`` folder."""

from __future__ import annotations

from pathlib import Path

from md2pr_st import distributed
from md2pr_st.cli.arguments import LossArguments, TrainArguments
from md2pr_st.data import load_rows
from md2pr_st.false_negatives import FalseNegativeFilter, FalseNegativeMasking
from md2pr_st.outputs import check_output
from md2pr_st.student import train_student
from md2pr_st.teacher import Teacher

FILTER_STATISTICS = "md2pr_filter.json"  # written by md2pr filter next to its rows


def run_train(args: TrainArguments, loss_args: LossArguments | None = None, trainer_args: dict | None = None) -> Path:
    """Train a student with MD2PRLoss on a filtered dataset folder (resumes from its last checkpoint);
    ``trainer_args``: other options of the host's SentenceTransformerTrainingArguments."""
    folder = Path(args.input)
    if distributed.is_main():
        inputs = {"--input": args.input, "--model": args.model, "--teacher": args.teacher}
        check_output(args.output_dir, kind="student", overwrite=args.overwrite, option="--output_dir", inputs=inputs)
    dataset = load_rows(folder, "--input", "Make one with `md2pr mine` and `md2pr filter`.")  # memory-mapped
    if len(dataset) == 0:
        raise ValueError(f"--input {folder} has 0 rows: nothing to train on.{_filter_counts(folder)}")
    teacher = Teacher(args.teacher, max_length=args.teacher_max_length, device=args.device) if args.teacher else None
    masking = FalseNegativeMasking(args.false_negative_margin, args.false_negative_threshold)
    if not masking.active and (folder / FILTER_STATISTICS).is_file():  # as md2pr filter left the rows
        masking = FalseNegativeFilter().load_statistics(folder / FILTER_STATISTICS).masking()
        if masking.active:
            print(f"{folder} was filtered with action='mask': masking with its {masking.describe()} in L_c")
    path, _ = train_student(
        args.model,
        dataset,
        args.output_dir,
        loss_args or LossArguments(),
        teacher=teacher,
        **masking.loss_kwargs(),
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
        last = FalseNegativeFilter().load_statistics(folder / FILTER_STATISTICS).rounds[-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""
    return (
        f" md2pr filter flagged {last.get('flagged')} of {last.get('candidates_scored')} candidates and dropped "
        f"{last.get('dropped_rows')} rows (rule {last.get('rule')}): loosen the rule, use --action mask, or mine more "
        "candidates."
    )
