"""The whole MD2PR pipeline on TREC RAG 2024 from Python (the same as `md2pr pipeline`).

    python examples/train_rag24.py --output-dir runs/rag24 --rounds 2

Every stage writes its output and a manifest into the run folder; running the script again skips finished
stages and resumes training from the last checkpoint.
"""

from __future__ import annotations

import argparse

from md2pr_st import PipelineArguments, load_splits, run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/rag24")
    parser.add_argument("--dataset", default="rag24", help="rag24 or a BEIR folder with train/dev/test qrels")
    parser.add_argument("--model", default=None, help="student (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--teacher", default=None, help="a trained cross-encoder; default: train one here")
    parser.add_argument("--teacher-base", default=None, help="backbone of the teacher trained here")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument("--teacher-max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    pipeline_args = PipelineArguments(
        output_dir=args.output_dir,
        model=args.model,
        teacher=args.teacher,
        teacher_base=args.teacher_base,
        rounds=args.rounds,
        max_seq_length=args.max_seq_length,
        teacher_max_length=args.teacher_max_length,
        batch_size=args.batch_size,
    )
    metrics = run_pipeline(load_splits(args.dataset), pipeline_args, command="python examples/train_rag24.py")
    print({name: round(metrics[name]["ndcg@10"], 4) for name in ("before", "after", "teacher_rerank")})
    print("after - before:", metrics["after_minus_before"]["ndcg@10"])


if __name__ == "__main__":
    main()
