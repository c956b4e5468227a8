"""``md2pr mine``: hard negatives mined with the current student, saved as a ``datasets`` folder."""

from __future__ import annotations

import sys
from pathlib import Path

from sentence_transformers import SentenceTransformer

from md2pr_st import distributed
from md2pr_st.cli.arguments import MineArguments
from md2pr_st.data import load_corpus, load_retrieval_data, load_rows, training_pairs
from md2pr_st.mining import mine_hard_negatives, save_mining_stats
from md2pr_st.models import resolve_model_name
from md2pr_st.outputs import check_inputs, check_output, check_writable, output_lock, refuse_other_kind
from md2pr_st.utils import atomic_path


def run_mine(args: MineArguments) -> dict:
    """``md2pr mine``: mine hard negatives and save the n-tuples as a `datasets` folder (its output checked and
    locked before any work)."""
    cache_dir = args.cache_dir or f"{args.output.rstrip('/')}.embeddings"
    if not distributed.is_main():  # the main process checks, locks and writes
        return _mine(args, cache_dir)
    inputs = {"--input": args.input, "--corpus": args.corpus, "--model": args.model}
    check_output(args.output, kind="mined", overwrite=args.overwrite, option="--output", inputs=inputs)
    # The cache works in place (a subfolder per model and corpus): it may share a folder with other files.
    check_inputs(cache_dir, {**inputs, "--output": args.output}, args.overwrite, "--cache_dir")
    refuse_other_kind(cache_dir, "embeddings", args.overwrite, "--cache_dir")
    check_writable(cache_dir, "--cache_dir")
    with output_lock(args.output, "--output"):
        return _mine(args, cache_dir)


def _mine(args: MineArguments, cache_dir: str) -> dict:
    source = Path(args.input)
    if args.input.startswith("rag24") or (source / "corpus.jsonl").is_file():
        kwargs = {"cache_dir": args.data_cache_dir} if args.input.startswith("rag24") else {}
        data = load_retrieval_data(args.input, args.split, **kwargs)
        pairs = training_pairs(data, args.min_grade, args.positives, args.skip_queries_without_positive)
        corpus = load_corpus(args.corpus) if args.corpus else data.corpus
    elif source.is_dir():
        pairs = load_rows(source, "--input")
        if args.corpus is None:
            raise ValueError("A `datasets` input needs --corpus (a `datasets` folder with id/text or a BEIR folder).")
        corpus = load_corpus(args.corpus)
    else:
        raise FileNotFoundError(f"--input {args.input}: not 'rag24', a BEIR folder or a `datasets` folder.")
    model = SentenceTransformer(resolve_model_name(args.model), device=args.device)
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    mined, stats = mine_hard_negatives(
        pairs,
        corpus,
        model,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        sampling=args.sampling,
        seed=args.seed,
        cache_dir=cache_dir,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        factory=args.factory,
        with_ids=args.with_ids,
        return_stats=True,
        show_progress_bar=True,
    )
    if len(mined) == 0:
        raise ValueError(
            f"No query kept {args.num_negatives} candidates in ranks {args.range_min}..{args.range_max - 1} "
            f"({stats.dropped_queries} queries dropped): raise --range_max or lower --num_negatives."
        )
    if not distributed.is_main():
        return stats.to_dict()
    with atomic_path(args.output, is_dir=True, overwrite=args.overwrite, kind="mined") as tmp:
        mined.save_to_disk(str(tmp))
        save_mining_stats(stats, tmp / "md2pr_mining.json")
    print(
        f"Mined {stats.rows_out:,} rows ({stats.queries:,} queries, {args.num_negatives} negatives each; "
        f"{stats.dropped_rows} rows dropped) -> {args.output}",
        file=sys.stderr,
    )
    return stats.to_dict()
