"""``md2pr eval``: retrieval quality of a SentenceTransformer on a collection split."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from sentence_transformers import SentenceTransformer

from md2pr_st import distributed
from md2pr_st.cli.arguments import DataArguments, EvalArguments
from md2pr_st.evaluation import RetrievalEvaluator, format_table
from md2pr_st.index import FaissIndex, IndexMismatchError
from md2pr_st.models import DEFAULT_STUDENT_ID, resolve_model_name
from md2pr_st.outputs import check_output, output_lock
from md2pr_st.utils import write_json


def run_eval(data_args: DataArguments, args: EvalArguments) -> dict:
    """``md2pr eval``: the outputs are checked (and locked) before the data and the model are loaded."""
    inputs = {"--dataset": data_args.dataset, "--sdist": data_args.sdist, "--model": args.model}
    outputs = [(args.output, "evaluation", "--output"), (args.index_dir, "index", "--index_dir")]
    outputs = [(path, kind, option) for path, kind, option in outputs if path and distributed.is_main()]
    for path, kind, option in outputs:
        file = kind == "evaluation"
        check_output(path, kind=kind, file=file, overwrite=args.overwrite, option=option, inputs=inputs)
    with contextlib.ExitStack() as stack:
        for path, _, option in outputs:
            stack.enter_context(output_lock(path, option))
        return _evaluate(data_args, args)


def _evaluate(data_args: DataArguments, args: EvalArguments) -> dict:
    start = time.perf_counter()
    data = data_args.load()
    model_name = resolve_model_name(args.model)
    model = SentenceTransformer(model_name, device=args.device)
    evaluator = RetrievalEvaluator(
        data, args.metrics, args.relevance_cut, args.index_factory, args.batch_size, show_progress_bar=True
    )
    index = None
    saved = args.index_dir and Path(args.index_dir).is_dir() and any(Path(args.index_dir).iterdir())
    if distributed.broadcast(saved):  # every process takes the main one's view of the folder
        try:
            index = FaissIndex.load(args.index_dir, model=model, corpus=data.corpus, factory=args.index_factory)
            print(f"Reusing the index in {args.index_dir}", file=sys.stderr)
        except (IndexMismatchError, FileNotFoundError, ValueError) as exc:
            print(f"Not reusing {args.index_dir}, rebuilding it: {exc}", file=sys.stderr)
    if index is None:
        index = FaissIndex.from_model(model, data.corpus, args.index_factory, args.batch_size, show_progress_bar=True)
        if args.index_dir and distributed.is_main():
            index.save(args.index_dir, overwrite=args.overwrite)
    result, _ = evaluator.evaluate(model, index=index, calibrate=True)  # built or loaded here for this run
    if not distributed.is_main():
        return result
    result = {
        **{m: result[m] for m in args.metrics},
        "n_queries": result["n_queries"],
        "n_queries_skipped": result["n_queries_skipped"],
        "corpus_size": result["corpus_size"],
        "relevance_cut": args.relevance_cut,
        "model": args.model or f"{DEFAULT_STUDENT_ID} (embedded)",
        "dataset": data.name,
        "index_factory": index.factory,
        **({"index_calibration": result["index_calibration"]} if "index_calibration" in result else {}),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(format_table({Path(str(args.model or DEFAULT_STUDENT_ID)).name: result}, args.metrics))
    print(
        f"{data.name}: {result['n_queries']} queries ({result['n_queries_skipped']} without a document at grade >= "
        f"{args.relevance_cut} skipped), corpus of {result['corpus_size']:,} passages"
    )
    if args.output:
        write_json(args.output, result)
        print(f"Wrote {args.output}")
    return result
