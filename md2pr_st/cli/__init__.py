"""The ``md2pr`` command line: one subcommand per pipeline stage.

Each subcommand's options are dataclasses (:mod:`md2pr_st.cli.arguments`) parsed by
:class:`transformers.HfArgumentParser`, so they can be given as flags or as a single JSON/YAML file
(``md2pr eval config.yaml``). Each subcommand's driver (``run_*`` in this package, one module per stage) only loads
inputs, calls the library's functions and prints their results.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from md2pr_st.cli import arguments

logger = logging.getLogger("md2pr_st")

# name -> (help, option dataclasses, "module:driver"); drivers are imported only when their command runs.
COMMANDS: dict[str, tuple[str, tuple[type, ...], str]] = {
    "eval": (
        "Evaluate a SentenceTransformer as a dense retriever (FAISS + trec_eval metrics).",
        (arguments.DataArguments, arguments.EvalArguments),
        "evaluate:run_eval",
    ),
    "teacher": (
        "Stage 0: train the cross-encoder teacher on the train split; reports its nDCG@10 gap to the student on dev.",
        (arguments.DataArguments, arguments.TeacherArguments),
        "teacher:run_teacher",
    ),
    "train": (
        "Train the student with MD2PRLoss on a filtered `datasets` folder (resumes from its last checkpoint).",
        (arguments.TrainArguments, arguments.LossArguments),
        "train:run_train",
    ),
    "pipeline": (
        "The whole MD2PR pipeline: teacher, then rounds of mine -> filter -> train -> evaluate; resumable.",
        (arguments.DataArguments, arguments.PipelineArguments, arguments.LossArguments),
        "pipeline:run_pipeline_command",
    ),
    "demo": (
        "The README's main job: the whole pipeline on the embedded default (all-MiniLM-L6-v2, RAG24) sized for 2 "
        "CPU cores; prints the before/after/teacher-rerank table on the test split.",
        (arguments.DataArguments, arguments.DemoArguments, arguments.DemoLossArguments),
        "pipeline:run_pipeline_command",
    ),
    "push": (
        "Push a model or run folder to the Hugging Face Hub with its MD2PR model card and plots, in one commit.",
        (arguments.PushArguments,),
        "push:run_push",
    ),
    "mine": (
        "Mine hard negatives with the current student and FAISS (cached, resumable corpus embeddings).",
        (arguments.MineArguments,),
        "mine:run_mine",
    ),
    "filter": (
        "Teacher-score mined candidates, drop false negatives (dynamic threshold), attach the `scores` column.",
        (arguments.FilterArguments,),
        "filter:run_filter",
    ),
}


def driver(name: str) -> Callable:
    """The ``run_*`` function of a command."""
    module, function = COMMANDS[name][2].split(":")
    return getattr(importlib.import_module(f"md2pr_st.cli.{module}"), function)


def _parse(name: str, argv: Sequence[str]):
    from transformers import HfArgumentParser

    help_text, classes, _ = COMMANDS[name]
    parser = HfArgumentParser(classes, prog=f"md2pr {name}", description=help_text)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")) and Path(argv[0]).is_file():
        try:
            if argv[0].endswith(".json"):
                return parser.parse_json_file(argv[0])
            return parser.parse_yaml_file(argv[0])
        except (ValueError, TypeError) as exc:  # unknown keys, wrong types
            parser.error(f"{argv[0]}: {exc}")
    *parsed, remaining = parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="md2pr",
        description="MD2PR: distil a cross-encoder into a sentence-transformers dense retriever.",
        epilog="Run `md2pr COMMAND --help` for a command's options.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="Log at INFO level.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    verbose = argv[0] in ("-v", "--verbose")
    if verbose:
        argv = argv[1:]
    if not argv or argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0] if argv else ''!r}; choose from {', '.join(COMMANDS)}")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logger.setLevel(logging.INFO)  # our own stage messages are few: shown without -v, other libraries' are not
    name, rest = argv[0], argv[1:]
    parsed = _parse(name, rest)
    try:
        driver(name)(*parsed)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"md2pr {name}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
