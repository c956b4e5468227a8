"""Which training recipe improves all-MiniLM-L6-v2 on TREC RAG 2024? One recipe per call, against the baseline.

Each call mines hard negatives for the train topics with the off-the-shelf student (top ranks 0..50 of the whole
6,011-passage corpus, known positives excluded), trains one copy of the student with
:func:`md2pr_st.student.train_student` (``MD2PRLoss``, 1 epoch, batch 16, 128 tokens) and evaluates it and the
off-the-shelf student on dev and test (exact search, UMBRELA qrels). It prints nDCG@10 and judged@10 (the share of
the top 10 the qrels judge: when it falls, passages from other topics' pools have entered the top 10) and the
ratio trained / baseline measured in the same run, and appends the result to ``OUTPUT/results.jsonl``.

The recipes of BENCHMARKS.md (issue 5):

- ``C``  contrastive only: ``--alpha 0``
- ``B2`` graded listwise L_s, grade >= 2 positives: ``--alpha 400 --scores qrels``
- ``D``  as B2 plus word level from a trained cross-encoder: ``--alpha 400 --beta 1 --teacher runs/teacher``
- ``G``  grade-3 positives, grade-2 candidates masked out of L_c: ``--alpha 400 --scores qrels --min-grade 3 --margin 1``
- ``J``  as G, grade-1 masked too: ``--alpha 400 --scores qrels --min-grade 3 --margin 2``
- ``K``  as G plus word level: ``... --margin 1 --beta 1 --teacher runs/teacher``

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/student_recipes.py --name J --alpha 400 --scores qrels --min-grade 3 \\
        --margin 2 --output runs/recipes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--output", default="runs/recipes")
    parser.add_argument("--alpha", type=float, default=0.0, help="Weight of L_s (scaled by T_s^2 = 0.0025).")
    parser.add_argument("--beta", type=float, default=0.0, help="Weight of L_w (needs --teacher).")
    parser.add_argument("--scores", choices=["none", "qrels", "teacher"], default="none", help="L_s teacher scores.")
    parser.add_argument("--teacher", default=None, help="Cross-encoder folder (word level, or --scores teacher).")
    parser.add_argument("--min-grade", type=int, default=2, help="Lowest grade of a positive.")
    parser.add_argument("--per-query", type=int, default=2, help="Rows per query: its k best positives.")
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--margin", type=float, default=None, help="MD2PRLoss false_negative_margin (score units).")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()

    import numpy as np
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from md2pr_st.cli.arguments import LossArguments
    from md2pr_st.data import load_rag24, training_pairs
    from md2pr_st.evaluation import RetrievalEvaluator
    from md2pr_st.index import CorpusEmbeddingCache
    from md2pr_st.mining import mine_hard_negatives, negative_columns
    from md2pr_st.models import resolve_model_name
    from md2pr_st.student import train_student
    from md2pr_st.teacher import QrelsScorer, Teacher

    out = Path(args.output)
    start = time.perf_counter()
    splits = {name: load_rag24(name) for name in ("train", "dev", "test")}
    corpus = splits["train"].corpus

    def load(path: str) -> SentenceTransformer:
        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = args.max_seq_length
        return model

    def evaluate(model: SentenceTransformer, embeddings: Path) -> dict:
        index = CorpusEmbeddingCache(model, corpus, embeddings, show_progress_bar=True).build_index()
        metrics = ("ndcg@10", "judged@10")
        return {s: RetrievalEvaluator(splits[s], metrics).evaluate(model, index=index)[0] for s in ("dev", "test")}

    student = load(resolve_model_name(None))
    base_embeddings = out / "baseline_embeddings"  # shared by every recipe: the off-the-shelf student
    # Rows for each query's k best positives; every judged positive (exclude_ids) is kept out of the negatives.
    pairs = training_pairs(
        splits["train"], min_grade=args.min_grade, positives=args.per_query, skip_queries_without_positive=True
    )
    mined = mine_hard_negatives(pairs, corpus, student, num_negatives=args.num_negatives, range_max=50, seed=14,
                                cache_dir=base_embeddings)  # fmt: skip
    columns = ["positive", *negative_columns(mined.column_names)]
    rows = {"query": mined["query"], **{c: mined[c] for c in columns}}
    teacher = Teacher(args.teacher, max_length=args.max_seq_length) if args.teacher else None
    if args.scores != "none":
        scorer = QrelsScorer(splits["train"]) if args.scores == "qrels" else teacher
        pairs_flat = [(q, row[c]) for q, row in zip(mined["query"], mined) for c in columns]
        scores = np.asarray(scorer.score(pairs_flat), dtype=np.float64).reshape(len(mined), len(columns))
        rows["scores"] = scores.tolist()
        if args.scores == "qrels":
            grades = np.bincount(scores[:, 1:].astype(int).ravel(), minlength=4).tolist()
            print(f"{len(mined)} rows; candidate grades 0/1/2/3: {grades}")
    t0 = time.perf_counter()
    path, _ = train_student(student, Dataset.from_dict(rows), out / args.name / "student",
                            LossArguments(alpha=args.alpha, beta=args.beta),
                            teacher=teacher if args.beta > 0 else None,
                            false_negative_margin=args.margin, learning_rate=args.learning_rate,
                            max_seq_length=args.max_seq_length, save_steps=10_000, seed=13)  # fmt: skip
    train_seconds = time.perf_counter() - t0
    baseline = evaluate(load(resolve_model_name(None)), base_embeddings)
    trained = evaluate(load(str(path)), out / args.name / "embeddings")
    print(f"\n{args.name}: {len(mined)} rows, trained in {train_seconds:.0f} s")
    print(f"{'split':<6} {'metric':<10} {'baseline':>9} {'trained':>9} {'ratio':>7}")
    for split in ("dev", "test"):
        for metric in ("ndcg@10", "judged@10"):
            b, t = baseline[split][metric], trained[split][metric]
            print(f"{split:<6} {metric:<10} {b:>9.4f} {t:>9.4f} {t / b:>7.3f}")
    record = {"name": args.name, "args": vars(args), "rows": len(mined), "train_seconds": round(train_seconds, 1),
              "baseline": baseline, "trained": trained, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
