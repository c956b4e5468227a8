"""``md2pr pipeline`` and ``md2pr demo``: the whole MD2PR pipeline on a collection's train / dev / test splits."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from md2pr_st import distributed
from md2pr_st.cli.arguments import DataArguments, LossArguments, PipelineArguments
from md2pr_st.evaluation import REPORT_METRICS, format_table
from md2pr_st.outputs import check_output
from md2pr_st.pipeline import pipeline_inputs, run_pipeline


def command_line() -> str:
    """The command that is running, for the model card (arguments quoted)."""
    return " ".join(shlex.quote(a) for a in ["md2pr", *sys.argv[1:]])


def run_pipeline_command(
    data_args: DataArguments, args: PipelineArguments, loss_args: LossArguments, trainer_args: dict | None = None
) -> dict[str, Any]:
    """Load the splits, run (or resume) the pipeline, print the before / after / teacher-rerank table on test."""
    if distributed.is_main():  # before loading the data
        inputs = {"--dataset": data_args.dataset, **{f"--{k}": v for k, v in pipeline_inputs(args).items()}}
        check_output(args.output_dir, kind="pipeline", overwrite=args.overwrite, option="--output_dir", inputs=inputs)
    splits = data_args.load_splits()
    metrics = run_pipeline(splits, args, loss_args, command=command_line(), training_args=trainer_args)
    if not distributed.is_main():
        return metrics
    rows = {"before (student)": metrics["before"], "after (MD2PR)": metrics["after"]}
    rows[f"teacher rerank@{args.rerank_k}"] = metrics["teacher_rerank"]
    print(format_table(rows, REPORT_METRICS))
    diffs = metrics.get("after_minus_before") or {}
    if diffs:
        n = next(iter(diffs.values()))["n"]
        print(f"after - before, mean over {n} queries [paired bootstrap 95% CI]:")
        for metric, ci in diffs.items():
            verdict = "" if ci["low"] > 0 or ci["high"] < 0 else "  (within the noise)"
            print(f"  {metric:<11} {ci['mean_diff']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]{verdict}")
    after = metrics["after"]
    print(
        f"{splits['test'].name}: {after['n_queries']} queries, corpus {after['corpus_size']:,}; run folder {args.output_dir}"
    )
    return metrics
