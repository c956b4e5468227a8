from __future__ import annotations

import math

import numpy as np
import pytest
import pytrec_eval
from datasets import Dataset

from md2pr_st.data import RetrievalData
from md2pr_st.evaluation import RetrievalEvaluator, evaluate_run, format_table, run_from_search

QRELS = {"q1": {"a": 3, "b": 1, "c": 2, "d": 0, "e": 2}, "q2": {"f": 2}, "q3": {"g": 1}}
RUN = {
    "q1": {"b": 0.9, "a": 0.8, "x": 0.7, "c": 0.6, "e": 0.1},
    "q2": {f"n{i}": 1.0 - i / 100 for i in range(10)} | {"f": 0.5},  # relevant at rank 11
    "q3": {"g": 1.0},
}


def test_metrics_match_hand_computed_values():
    result = evaluate_run(
        RUN, QRELS, ["ndcg@3", "ndcg@10", "mrr@10", "recall@3", "recall@100", "map@100", "precision@2"]
    )
    # q3 has no document at grade >= 2: skipped from every average.
    assert result["n_queries"] == 2 and result["n_queries_skipped"] == 1
    # q1 ranking: b(1) a(3) x(-) c(2) e(2); relevant at cut 2: a, c, e.
    dcg3 = 1 / math.log2(2) + 3 / math.log2(3)
    idcg3 = 3 / math.log2(2) + 2 / math.log2(3) + 2 / math.log2(4)
    dcg10 = dcg3 + 2 / math.log2(5) + 2 / math.log2(6)
    idcg10 = idcg3 + 1 / math.log2(5)
    # q2: f (grade 2) at rank 11.
    assert result["ndcg@3"] == pytest.approx((dcg3 / idcg3 + 0) / 2)
    assert result["ndcg@10"] == pytest.approx((dcg10 / idcg10 + 0) / 2)
    assert result["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["recall@3"] == pytest.approx((1 / 3 + 0) / 2)
    assert result["recall@100"] == pytest.approx((3 / 3 + 1) / 2)
    ap_q1 = (1 / 2 + 2 / 4 + 3 / 5) / 3
    assert result["map@100"] == pytest.approx((ap_q1 + 1 / 11) / 2)
    assert result["precision@2"] == pytest.approx((1 / 2 + 0) / 2)


def test_judged_at_k_counts_the_top_k_the_qrels_judge_whatever_the_grade():
    result = evaluate_run(RUN, QRELS, ["judged@3", "judged@5", "judged@10"], per_query=True)
    # q1 top-5: b a x c e -> judged b, a (top-3: 2/3), then c, e (top-5: 4/5); top-10 holds only those 5 -> 4/10.
    # q2 top-10: n0..n9, none judged (f is at rank 11).
    assert result["per_query"]["judged@3"] == {"q1": pytest.approx(2 / 3), "q2": 0.0}
    assert result["per_query"]["judged@5"] == {"q1": pytest.approx(4 / 5), "q2": 0.0}
    assert result["judged@10"] == pytest.approx((4 / 10 + 0) / 2)


def test_relevance_cut_changes_binary_metrics_only():
    at1 = evaluate_run(RUN, QRELS, ["mrr@10", "recall@3", "ndcg@10"], relevance_cut=1)
    at2 = evaluate_run(RUN, QRELS, ["mrr@10", "recall@3", "ndcg@10"], relevance_cut=2)
    assert at1["n_queries"] == 3
    assert at1["mrr@10"] == pytest.approx((1 + 0 + 1) / 3)  # b (grade 1) now counts
    assert at1["recall@3"] == pytest.approx((2 / 4 + 0 + 1) / 3)
    per_query_2 = evaluate_run(RUN, QRELS, ["ndcg@10"], relevance_cut=2, per_query=True)["per_query"]
    per_query_1 = evaluate_run(RUN, QRELS, ["ndcg@10"], relevance_cut=1, per_query=True)["per_query"]
    assert per_query_1["ndcg@10"]["q1"] == per_query_2["ndcg@10"]["q1"]
    assert at2["ndcg@10"] != at1["ndcg@10"]  # only because the query set differs


def test_agrees_with_pytrec_eval_on_random_runs():
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(200)]
    qrels = {f"q{i}": {d: int(rng.integers(0, 4)) for d in rng.choice(docs, 30, replace=False)} for i in range(25)}
    run = {q: {d: float(s) for d, s in zip(docs, rng.standard_normal(200))} for q in qrels}
    ours = evaluate_run(run, qrels, ["ndcg@10", "recall@100", "map@100"], relevance_cut=2)
    kept = {q: v for q, v in qrels.items() if max(v.values()) >= 2}
    ref = pytrec_eval.RelevanceEvaluator(kept, {"ndcg_cut.10", "recall.100", "map_cut.100"}, relevance_level=2)
    ref = ref.evaluate({q: run[q] for q in kept})
    assert ours["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ref.values()]))
    assert ours["recall@100"] == pytest.approx(np.mean([v["recall_100"] for v in ref.values()]))
    assert ours["map@100"] == pytest.approx(np.mean([v["map_cut_100"] for v in ref.values()]))


def _ndcg_by_hand(ranking: list[str], grades: dict[str, int], k: int) -> float:
    """nDCG@k with linear gains and log2 discounts, the ideal order over every judged document (trec_eval's)."""
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def test_condensed_lists_take_unjudged_documents_out_before_the_cut():
    qrels = {"q1": {"a": 3, "b": 0, "c": 2, "d": 1}, "q2": {"e": 2, "f": 0}}
    # q1: two unjudged passages (x, y) above the judged ones; q2: unjudged z first, then a judged non-relevant f
    run = {
        "q1": {"x": 0.99, "b": 0.9, "y": 0.8, "c": 0.7, "a": 0.6, "d": 0.1},
        "q2": {"z": 0.9, "f": 0.8, "e": 0.7},
    }
    result = evaluate_run(run, qrels, ["ndcg@3", "condensed_ndcg@3", "judged@3", "condensed_mrr@10"], per_query=True)
    per_query = result["per_query"]
    # standard: x, b, y -> q1 gains 0, 0, 0; q2: z, f, e -> 0, 0, 2
    assert per_query["ndcg@3"]["q1"] == 0.0
    assert per_query["ndcg@3"]["q2"] == pytest.approx(_ndcg_by_hand(["z", "f", "e"], qrels["q2"], 3))
    # condensed: q1 -> b, c, a ; q2 -> f, e
    assert per_query["condensed_ndcg@3"]["q1"] == pytest.approx(_ndcg_by_hand(["b", "c", "a"], qrels["q1"], 3))
    assert per_query["condensed_ndcg@3"]["q2"] == pytest.approx(_ndcg_by_hand(["f", "e"], qrels["q2"], 3))
    assert per_query["condensed_ndcg@3"]["q1"] == pytest.approx(
        (2 / math.log2(3) + 3 / math.log2(4)) / (3 + 2 / math.log2(3) + 1 / math.log2(4))
    )
    assert result["condensed_ndcg@3"] == pytest.approx(np.mean(list(per_query["condensed_ndcg@3"].values())))
    assert per_query["condensed_mrr@10"] == {"q1": 0.5, "q2": 0.5}  # c is 2nd of b, c, a; e 2nd of f, e
    assert per_query["judged@3"] == {"q1": pytest.approx(1 / 3), "q2": pytest.approx(2 / 3)}
    # a run with every document judged: condensed and standard agree
    judged_only = {q: {d: s for d, s in docs.items() if d in qrels[q]} for q, docs in run.items()}
    same = evaluate_run(judged_only, qrels, ["ndcg@3", "condensed_ndcg@3"])
    assert same["ndcg@3"] == pytest.approx(same["condensed_ndcg@3"])
    with pytest.raises(ValueError, match="Unknown metric 'condensed_judged@3'"):
        evaluate_run(run, qrels, ["condensed_judged@3"])


def test_bad_metric_names_and_missing_queries():
    with pytest.raises(ValueError, match="Unknown metric 'ndcg10'"):
        evaluate_run(RUN, QRELS, ["ndcg10"])
    with pytest.raises(ValueError, match="Unknown metric 'hits@10'"):
        evaluate_run(RUN, QRELS, ["hits@10"])
    with pytest.raises(ValueError, match="no results for 1 judged queries.*q2"):
        evaluate_run({"q1": RUN["q1"]}, QRELS, ["ndcg@10"])
    with pytest.raises(ValueError, match="No query has a document with grade >= 4"):
        evaluate_run(RUN, QRELS, ["ndcg@10"], relevance_cut=4)


def toy_data():
    corpus = Dataset.from_dict(
        {
            "id": [f"d{i}" for i in range(8)],
            "text": ["the cat", "the dog", "paris france", "python snake", "tea", "coffee island", "a river", "sea"],
        }
    )
    queries = Dataset.from_dict({"id": ["q1", "q2", "q3"], "text": ["cat", "capital of france", "snake"]})
    qrels = {"q1": {"d0": 3, "d1": 1}, "q2": {"d2": 2}, "q3": {"d3": 2, "d0": 0}}
    return RetrievalData(corpus, queries, qrels, "toy")


def test_evaluator_agrees_with_brute_force_retrieval(tiny_model):
    data = toy_data()
    evaluator = RetrievalEvaluator(data, metrics=["ndcg@5", "mrr@10", "recall@3", "map@100"], name="toy")
    metrics = evaluator(tiny_model)
    assert evaluator.primary_metric == "toy_ndcg@5"
    # Independent path: plain encode, numpy similarities, pytrec_eval directly.
    q = tiny_model.encode(data.queries["text"], normalize_embeddings=True)
    d = tiny_model.encode(data.corpus["text"], normalize_embeddings=True)
    sims = q @ d.T
    run = {qid: dict(zip(data.corpus["id"], map(float, row))) for qid, row in zip(data.queries["id"], sims)}
    ref = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.5", "recall.3", "map_cut.100"}, relevance_level=2)
    ref = ref.evaluate(run)
    assert metrics["toy_ndcg@5"] == pytest.approx(np.mean([v["ndcg_cut_5"] for v in ref.values()]), abs=1e-6)
    assert metrics["toy_recall@3"] == pytest.approx(np.mean([v["recall_3"] for v in ref.values()]), abs=1e-6)
    assert metrics["toy_map@100"] == pytest.approx(np.mean([v["map_cut_100"] for v in ref.values()]), abs=1e-6)
    first_rel = []
    for qid, row in zip(data.queries["id"], sims):
        order = [data.corpus["id"][j] for j in np.argsort(-row)]
        ranks = [r for r, doc in enumerate(order, 1) if data.qrels[qid].get(doc, 0) >= 2]
        first_rel.append(1 / ranks[0] if ranks and ranks[0] <= 10 else 0.0)
    assert metrics["toy_mrr@10"] == pytest.approx(np.mean(first_rel), abs=1e-6)


def test_evaluator_plugs_into_the_trainer(tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    train = Dataset.from_dict({"anchor": ["cat", "snake", "france"], "positive": ["the cat", "python", "paris"]})
    evaluator = RetrievalEvaluator(toy_data(), metrics=["ndcg@10", "recall@3"], name="toy")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=3, report_to="none", use_cpu=True
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(model), evaluator=evaluator
    )
    trainer.train()
    result = trainer.evaluate()
    assert set(result) >= {"eval_toy_ndcg@10", "eval_toy_recall@3"}
    assert result["eval_toy_ndcg@10"] == pytest.approx(evaluator(model)["toy_ndcg@10"])


def test_run_from_search_and_table():
    run = run_from_search(["q1"], np.array([[0.5, 0.25]]), [["a", "b"]])
    assert run == {"q1": {"a": 0.5, "b": 0.25}}
    table = format_table({"model": {"ndcg@10": 0.5, "mrr@10": 0.25}}, ["ndcg@10", "mrr@10"])
    assert "0.5000" in table and "0.2500" in table


@pytest.mark.slow
def test_real_run_minilm_on_rag24_test_pools(minilm_path):
    """A real model on real data: our FAISS + trec_eval path equals plain encode + torch top-k + pytrec_eval."""
    import torch
    from sentence_transformers import SentenceTransformer

    from md2pr_st.data import load_rag24

    data = load_rag24("test")
    pool = sorted({d for docs in data.qrels.values() for d in docs})  # ~1.2k passages: keeps the test short
    keep = set(pool)
    corpus = data.corpus.select([i for i, d in enumerate(data.corpus["id"]) if d in keep])
    data = RetrievalData(corpus, data.queries, data.qrels, "rag24-test-pools")
    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = 128
    metrics = ["ndcg@10", "recall@100", "map@100", "mrr@10"]
    ours, _ = RetrievalEvaluator(data, metrics=metrics).evaluate(model)

    q = model.encode(data.queries["text"], convert_to_tensor=True, normalize_embeddings=True)
    d = model.encode(data.corpus["text"], convert_to_tensor=True, normalize_embeddings=True)
    top = torch.topk(q @ d.T, k=100, dim=1)
    run = {
        qid: {data.corpus["id"][j]: float(s) for s, j in zip(scores.tolist(), idx.tolist())}
        for qid, scores, idx in zip(data.queries["id"], top.values, top.indices)
    }
    kept = {qid: v for qid, v in data.qrels.items() if max(v.values()) >= 2}
    ref = pytrec_eval.RelevanceEvaluator(kept, {"ndcg_cut.10", "recall.100", "map_cut.100"}, relevance_level=2)
    ref = ref.evaluate({qid: run[qid] for qid in kept})
    assert ours["n_queries"] == len(kept) > 50
    assert ours["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ref.values()]), abs=1e-4)
    assert ours["recall@100"] == pytest.approx(np.mean([v["recall_100"] for v in ref.values()]), abs=1e-4)
    assert ours["map@100"] == pytest.approx(np.mean([v["map_cut_100"] for v in ref.values()]), abs=1e-4)
    assert 0.3 < ours["ndcg@10"] < 1.0  # a real retriever, far above random on its own pools


def test_evaluator_searches_the_index_it_was_given_while_the_model_is_unchanged(tiny_model, monkeypatch):
    import torch

    from md2pr_st.index import FaissIndex

    data = RetrievalData(
        corpus=Dataset.from_dict({"id": ["d1", "d2", "d3"], "text": ["the cat", "the dog", "tea and coffee"]}),
        queries=Dataset.from_dict({"id": ["q1"], "text": ["a cat"]}),
        qrels={"q1": {"d1": 3}},
    )
    index = FaissIndex.from_model(tiny_model, data.corpus)
    evaluator = RetrievalEvaluator(data, metrics=["ndcg@10"], index=index, show_progress_bar=False)
    built = []
    original = FaissIndex.from_model.__func__
    monkeypatch.setattr(
        FaissIndex, "from_model", classmethod(lambda cls, *a, **k: built.append(1) or original(cls, *a, **k))
    )
    reused = evaluator(tiny_model)
    assert built == []  # the corpus was not encoded again: the given index served
    with torch.no_grad():
        next(tiny_model.parameters()).add_(0.5)  # "trained since": the index no longer matches the model
    evaluator(tiny_model)
    assert built == [1] and 0 <= reused["ndcg@10"] <= 1
    other = RetrievalData(data.corpus.select([0, 1]), data.queries, {"q1": {"d1": 3}})
    with pytest.raises(ValueError, match="holds 3 vectors but the corpus has 2 passages"):
        RetrievalEvaluator(other, index=index)


def test_rerank_run_warns_when_the_run_is_shallower_than_k(caplog):
    """A run cut at 10 reranked "at 20" only reorders its 10: the reranked top 10 is the same set, which a judged@10
    or a recall comparison would misread. The user is told, with the depth to retrieve."""
    from datasets import Dataset

    from md2pr_st.evaluation import RetrievalData, rerank_run
    from md2pr_st.teacher import QrelsScorer

    ids = [f"d{i}" for i in range(30)]
    data = RetrievalData(
        corpus=Dataset.from_dict({"id": ids, "text": [f"passage {i}" for i in range(30)]}),
        queries=Dataset.from_dict({"id": ["q"], "text": ["query"]}),
        qrels={"q": {"d2": 3}},
    )
    shallow = {"q": {d: 1.0 - i / 100 for i, d in enumerate(ids[:3])}}
    with caplog.at_level("WARNING"):
        reranked = rerank_run(QrelsScorer(data), data, shallow, k=20)
    assert "holds at most 3 passages per query" in caplog.text and "recall@20" in caplog.text
    assert max(reranked["q"], key=reranked["q"].get) == "d2"  # what it holds is still reordered
    caplog.clear()
    with caplog.at_level("WARNING"):
        rerank_run(QrelsScorer(data), data, {"q": {d: 1.0 - i / 100 for i, d in enumerate(ids)}}, k=20)
    assert "holds at most" not in caplog.text
