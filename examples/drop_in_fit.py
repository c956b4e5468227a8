"""A standard sentence-transformers fit script where only the loss line changes to MD2PRLoss.

The data are real hard negatives: for each RAG24 train topic, a passage judged highly relevant (grade 3) is the
positive and passages from the same pool judged not relevant (grade 0) are the negatives. Everything else is the
host library's usual recipe.

    python examples/drop_in_fit.py --teacher runs/demo/teacher/model      # a trained cross-encoder (Hub id or folder)
    python examples/drop_in_fit.py --teacher cross-encoder/ms-marco-MiniLM-L6-v2   # with Hub access
    torchrun --nproc_per_node 2 examples/drop_in_fit.py --teacher runs/demo/teacher/model   # 2 processes (DDP)
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from md2pr_st import MD2PRLoss, RetrievalEvaluator, Teacher
from md2pr_st.data import load_retrieval_data
from md2pr_st.distributed import leave
from md2pr_st.models import resolve_model_name


def judged_triplets(data, num_negatives: int = 2) -> Dataset:
    """(query, positive, negative_1..n) from graded qrels: grade-3 positives, grade-0 negatives of the same pool."""
    texts = dict(zip(data.corpus["id"], data.corpus["text"]))
    rows: dict[str, list[str]] = {"query": [], "positive": []} | {
        f"negative_{i + 1}": [] for i in range(num_negatives)
    }
    for qid, query in zip(data.queries["id"], data.queries["text"]):
        judged = data.qrels[qid]
        positives = [d for d, g in judged.items() if g == max(judged.values()) and g >= 2]
        negatives = [d for d, g in judged.items() if g == 0]
        if positives and len(negatives) >= num_negatives:
            rows["query"].append(query)
            rows["positive"].append(texts[positives[0]])
            for i in range(num_negatives):
                rows[f"negative_{i + 1}"].append(texts[negatives[i]])
    return Dataset.from_dict(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="student (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--teacher", required=True, help="a cross-encoder: Hub id or folder")
    parser.add_argument("--dataset", default="rag24", help="rag24 or a BEIR folder with qrels/train.tsv, dev.tsv")
    parser.add_argument("--output-dir", default="runs/drop_in_fit")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-negatives", type=int, default=2, help="hard negatives per row (grade-0 passages)")
    args = parser.parse_args()

    model = SentenceTransformer(resolve_model_name(args.model))
    model.max_seq_length = args.max_seq_length
    train_dataset = judged_triplets(load_retrieval_data(args.dataset, "train"), args.num_negatives)
    if len(train_dataset) == 0:
        raise SystemExit(
            f"No training rows: no train query has {args.num_negatives} grade-0 passages; lower --num-negatives."
        )
    evaluator = RetrievalEvaluator(load_retrieval_data(args.dataset, "dev"), name="dev")

    # Before: loss = MultipleNegativesRankingLoss(model)
    loss = MD2PRLoss(model, teacher=Teacher(args.teacher, max_length=256))  # beta=0.1 adds the word level

    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=1,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-5,
        warmup_steps=0.1,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        logging_steps=5,
        report_to="none",
        # Without a GPU, several processes (torchrun / accelerate launch) train as one job only on the CPU device.
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=train_dataset, loss=loss, evaluator=evaluator
    )
    trainer.train()
    if trainer.is_world_process_zero():  # under torchrun / accelerate launch, one process reports and saves
        print(evaluator(model))
        model.save(f"{args.output_dir}/final")
    leave()  # under torchrun: every process waits for the main one, then the process group closes


if __name__ == "__main__":
    main()
