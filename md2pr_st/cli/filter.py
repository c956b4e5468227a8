"""``md2pr filter``: one round of false-negative filtering of a mined ``datasets`` folder."""

from __future__ import annotations

import sys
from pathlib import Path

from md2pr_st import distributed
from md2pr_st.cli.arguments import FilterArguments
from md2pr_st.data import load_rows
from md2pr_st.false_negatives import FalseNegativeFilter
from md2pr_st.outputs import check_output, output_lock
from md2pr_st.teacher import Teacher
from md2pr_st.utils import atomic_path


def run_filter(args: FilterArguments) -> dict:
    """``md2pr filter``: one round of false-negative filtering; writes the dataset, JSON statistics and a PNG (the
    outputs checked and locked before any work)."""
    source = Path(args.input)
    if not source.is_dir():
        raise FileNotFoundError(f"--input {args.input} is not a `datasets` folder (the output of md2pr mine).")
    if not distributed.is_main():  # the main process checks, locks and writes
        return _filter(args, source)
    inputs = {"--input": args.input, "--teacher": args.teacher}
    check_output(args.output, kind="filtered", overwrite=args.overwrite, option="--output", inputs=inputs)
    if args.statistics:
        check_output(
            args.statistics, kind="statistics", file=True, overwrite=args.overwrite, option="--statistics",
            inputs={**inputs, "--output": args.output},
        )  # fmt: skip
    with output_lock(args.output, "--output"):
        return _filter(args, source)


def _filter(args: FilterArguments, source: Path) -> dict:
    teacher = None
    if args.teacher:
        teacher = Teacher(args.teacher, max_length=args.max_length, batch_size=args.batch_size, device=args.device)
    dataset = load_rows(source, "--input", "Make one with `md2pr mine`.")
    if len(dataset) == 0:
        raise ValueError(f"--input {source} has 0 rows: nothing to filter. Mine again with a wider rank range.")
    extra = [c for c in dataset.column_names if c in ("query_id", "positive_id", "negative_ids")]
    if extra:
        dataset = dataset.remove_columns(extra)
    fn_filter = FalseNegativeFilter(
        teacher,
        args.rule,
        quantile=args.quantile,
        min_margin=args.min_margin,
        max_margin=args.max_margin,
        margin=args.margin,
        relative_margin=args.relative_margin,
        threshold=args.threshold,
        num_negatives=args.num_negatives,
        keep_as_positives=args.keep_as_positives,
        refill_order=args.refill_order,
        action=args.action,
        batch_size=args.batch_size,
        show_progress_bar=True,
    )
    stats_path = Path(args.statistics) if args.statistics else None
    if stats_path is not None and stats_path.is_file():
        fn_filter.load_statistics(stats_path)
    filtered = fn_filter.apply(dataset, num_proc=args.num_proc)
    last = fn_filter.statistics["rounds"][-1]
    if len(filtered) == 0:
        raise ValueError(
            f"No row is left after filtering {len(dataset):,} rows: {last['flagged']:,} of "
            f"{last['candidates_scored']:,} candidates flagged, {last['dropped_rows']:,} rows dropped (rule "
            f"{args.rule}). Loosen the rule, use --action mask, or mine more candidates; nothing was written."
        )
    if not distributed.is_main():
        return last
    with atomic_path(args.output, is_dir=True, overwrite=args.overwrite, kind="filtered") as tmp:
        filtered.save_to_disk(str(tmp))
        fn_filter.save_statistics(tmp / "md2pr_filter.json")
        fn_filter.plot(tmp / "md2pr_filter_gaps.png")
    if stats_path is not None:
        fn_filter.save_statistics(stats_path)
    criteria = [f"{key} {last[key]:.4f}" for key in ("margin", "threshold") if last.get(key) is not None]
    print(
        f"Round {last['round']} ({', '.join([args.rule, *criteria])}): {last['flagged']:,} of "
        f"{last['candidates_scored']:,} candidates flagged, {last['dropped_rows']:,} rows dropped, "
        f"{last['rows_out']:,} rows -> {args.output}",
        file=sys.stderr,
    )
    return last
