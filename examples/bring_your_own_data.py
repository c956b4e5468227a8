"""MD2PR on your own data in the BEIR layout, stage by stage from Python.

    my_data/corpus.jsonl        {"_id": ..., "title": ..., "text": ...}
    my_data/queries.jsonl       {"_id": ..., "text": ...}
    my_data/qrels/train.tsv     query-id, corpus-id, score (header line)
    my_data/qrels/test.tsv

    python examples/bring_your_own_data.py my_data --teacher path/or/hub-id/of/a/cross-encoder

Each stage takes and returns `datasets` objects or paths, so any of them can be swapped for your own code.
"""

from __future__ import annotations

import argparse

from sentence_transformers import SentenceTransformer

from md2pr_st import (
    FalseNegativeFilter,
    RetrievalEvaluator,
    Teacher,
    load_beir,
    mine_hard_negatives,
    train_student,
    training_pairs,
)
from md2pr_st.models import resolve_model_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a BEIR-layout folder with qrels/train.tsv and qrels/test.tsv")
    parser.add_argument("--teacher", required=True, help="a cross-encoder: Hub id or folder")
    parser.add_argument("--model", default=None, help="student (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--output-dir", default="runs/byod")
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    train, test = load_beir(args.folder, "train"), load_beir(args.folder, "test")
    student = SentenceTransformer(resolve_model_name(args.model))
    teacher = Teacher(args.teacher)
    evaluator = RetrievalEvaluator(test, metrics=["ndcg@10", "recall@100"], name="test")
    print("before:", evaluator(student))

    # 1. mine candidates with the student (FAISS), 2. flag false negatives and attach teacher logits
    mined = mine_hard_negatives(training_pairs(train), train.corpus, student, num_negatives=args.num_negatives + 2)
    false_negatives = FalseNegativeFilter(teacher, num_negatives=args.num_negatives, action="mask")
    filtered = false_negatives.apply(mined)
    round_ = false_negatives.statistics["rounds"][-1]
    print("false negatives:", {k: round_[k] for k in ("threshold", "flagged")})

    # 3. train the student with L_c + alpha L_s + beta L_w, the flagged candidates masked out of L_c
    path, _ = train_student(
        student,
        filtered,
        f"{args.output_dir}/student",
        teacher=teacher,
        false_negative_margin=round_["margin"],
        false_negative_threshold=round_["threshold"],
        batch_size=args.batch_size,
    )
    print("after:", evaluator(SentenceTransformer(str(path))))


if __name__ == "__main__":
    main()
