from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from sentence_transformers import SentenceTransformer

from md2pr_st.index import FaissIndex, IndexMismatchError, encode, retrieve
from md2pr_st.models import model_fingerprint
from tiny_models import build_tiny_sentence_transformer


def random_unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_equals_brute_force_top_k():
    docs, queries = random_unit(500, 16, 0), random_unit(20, 16, 1)
    ids = [f"d{i}" for i in range(500)]
    scores, found = FaissIndex.build(docs, ids).search(queries, k=7)
    sims = queries @ docs.T
    expected = np.argsort(-sims, axis=1)[:, :7]
    assert found == [[ids[j] for j in row] for row in expected]
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, 1), rtol=1e-5, atol=1e-6)


def test_k_larger_than_corpus_is_capped():
    scores, found = FaissIndex.build(np.eye(3, dtype="float32"), ["a", "b", "c"]).search(
        np.eye(3, dtype="float32"), 10
    )
    assert scores.shape == (3, 3) and [row[0] for row in found] == ["a", "b", "c"]


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat", "IVF16,PQ8"])
def test_approximate_factories_find_most_exact_neighbours(factory):
    # Clustered data, as embeddings are: approximate search finds the exact neighbours.
    rng = np.random.default_rng(0)
    centers = random_unit(40, 32, 1)
    docs = centers[rng.integers(0, 40, 4000)] + 0.1 * rng.standard_normal((4000, 32)).astype("float32")
    ids = [str(i) for i in range(4000)]
    queries = docs[:100] + 0.01
    _, exact = FaissIndex.build(docs, ids).search(queries, 10)
    approx_index = FaissIndex.build(docs, ids, factory, nprobe=8)
    _, approx = approx_index.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= (0.95 if "PQ" not in factory else 0.5), recall
    assert approx_index.factory == factory


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 embeddings but 2 document ids"):
        FaissIndex.build(np.eye(3, dtype="float32"), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        FaissIndex.build(np.eye(2, dtype="float32"), ["a", "a"])
    with pytest.raises(ValueError, match="non-empty 2-d"):
        FaissIndex.build(np.zeros((0, 4), dtype="float32"), [])
    with pytest.raises(ValueError, match="NaN"):
        FaissIndex.build(np.full((2, 2), np.nan, dtype="float32"), ["a", "b"])
    index = FaissIndex.build(np.eye(3, dtype="float32"), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expects \(n, 3\)"):
        index.search(np.ones((1, 4), dtype="float32"))


def test_encode_uses_query_and_document_prompts(tiny_model_path):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    model.prompts = {"query": "query: ", "document": "passage: "}
    got_q = encode(model, ["the cat"], "query")
    got_d = encode(model, ["the cat"], "document")
    want_q = model.encode(["query: the cat"], normalize_embeddings=True)
    want_d = model.encode(["passage: the cat"], normalize_embeddings=True)
    np.testing.assert_allclose(got_q, want_q, atol=1e-6)
    np.testing.assert_allclose(got_d, want_d, atol=1e-6)
    assert not np.allclose(got_q, got_d)
    np.testing.assert_allclose(np.linalg.norm(got_q, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        encode(model, [], "query")
    with pytest.raises(ValueError, match="empty or not strings"):
        encode(model, ["ok", ""], "document")


def test_dot_similarity_is_not_normalised(tiny_model_path):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    model.similarity_fn_name = "dot"
    np.testing.assert_allclose(encode(model, ["the cat"]), model.encode(["the cat"]), atol=1e-6)
    model.similarity_fn_name = "euclidean"
    with pytest.raises(ValueError, match="supports 'cosine' and 'dot'"):
        encode(model, ["the cat"])


def test_save_load_round_trip_and_fingerprint_refusal(tiny_model, tmp_path):
    corpus = Dataset.from_dict({"id": ["d1", "d2", "d3"], "text": ["the cat", "the dog", "paris france"]})
    index = FaissIndex.from_model(tiny_model, corpus)
    saved = index.save(tmp_path / "index")
    loaded = FaissIndex.load(saved, model=tiny_model, corpus=corpus)
    q = encode(tiny_model, ["a cat"], "query")
    assert loaded.search(q, 3)[1] == index.search(q, 3)[1]
    np.testing.assert_array_equal(loaded.search(q, 3)[0], index.search(q, 3)[0])
    assert retrieve(tiny_model, ["a cat"], loaded, 3)[1] == index.search(q, 3)[1]
    assert loaded.model_fingerprint == model_fingerprint(tiny_model)

    other_model = build_tiny_sentence_transformer(tmp_path / "other", seed=5)
    with pytest.raises(IndexMismatchError, match="different model"):
        FaissIndex.load(saved, model=other_model)
    other_corpus = corpus.map(lambda row: {"text": row["text"] + "!"})
    with pytest.raises(IndexMismatchError, match="different corpus"):
        FaissIndex.load(saved, corpus=other_corpus)


def test_corrupt_or_incomplete_index_is_refused(tiny_model, tmp_path):
    corpus = Dataset.from_dict({"id": ["d1", "d2"], "text": ["the cat", "the dog"]})
    saved = FaissIndex.from_model(tiny_model, corpus).save(tmp_path / "index")
    (saved / "index.faiss").write_bytes((saved / "index.faiss").read_bytes()[:20])
    with pytest.raises(ValueError, match="corrupt"):
        FaissIndex.load(saved)
    (saved / "doc_ids.json").unlink()
    with pytest.raises(FileNotFoundError, match="doc_ids.json missing"):
        FaissIndex.load(saved)


def test_failed_save_keeps_the_previous_index(tiny_model, tmp_path, monkeypatch):
    corpus = Dataset.from_dict({"id": ["d1", "d2"], "text": ["the cat", "the dog"]})
    index = FaissIndex.from_model(tiny_model, corpus)
    saved = index.save(tmp_path / "index")
    before = (saved / "index.faiss").read_bytes()
    import md2pr_st.index.faiss_index as index_mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_mod.faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(saved)
    assert (saved / "index.faiss").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_hnsw_defaults_and_search_params_are_applied():
    import faiss

    from md2pr_st.index import DEFAULT_HNSW_EF_CONSTRUCTION, DEFAULT_HNSW_EF_SEARCH

    index = FaissIndex.build(random_unit(200, 8), [str(i) for i in range(200)], "HNSW16")
    hnsw = faiss.downcast_index(index.index).hnsw
    assert (hnsw.efConstruction, hnsw.efSearch) == (DEFAULT_HNSW_EF_CONSTRUCTION, DEFAULT_HNSW_EF_SEARCH) == (100, 128)
    index.set_search_params(ef_search=256)
    assert faiss.downcast_index(index.index).hnsw.efSearch == 256
    ivf = FaissIndex.build(random_unit(400, 8), [str(i) for i in range(400)], "IVF8,Flat", nprobe=3)
    assert faiss.extract_index_ivf(ivf.index).nprobe == 3


def test_auto_factory_is_exact_below_the_size_and_hnsw_from_it_on_request(tiny_model, tmp_path, monkeypatch):
    from md2pr_st.index import CorpusEmbeddingCache, faiss_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype("float32")
    ids = [f"d{i}" for i in range(50)]
    assert FaissIndex.build(vectors, ids).factory == "Flat"  # the default: exact
    assert FaissIndex.build(vectors, ids, "auto").factory == "Flat"  # below the size
    monkeypatch.setattr(faiss_index, "AUTO_HNSW_MIN_SIZE", 50)
    hnsw = FaissIndex.build(vectors, ids, "auto")
    assert hnsw.factory == "HNSW32" and hnsw.index.hnsw.efConstruction == faiss_index.DEFAULT_HNSW_EF_CONSTRUCTION
    corpus = Dataset.from_dict({"id": ids, "text": [f"passage number {i}" for i in range(50)]})
    cached = CorpusEmbeddingCache(tiny_model, corpus, tmp_path / "cache", chunk_size=20, show_progress_bar=False)
    index = cached.build_index("auto")
    assert index.factory == "HNSW32" and "HNSW" in type(index.index).__name__
    index.save(tmp_path / "index")
    assert FaissIndex.load(tmp_path / "index", factory="auto").factory == "HNSW32"
    with pytest.raises(faiss_index.IndexMismatchError):
        FaissIndex.load(tmp_path / "index", factory="Flat")


def test_the_cache_fills_an_exact_index_in_place_with_the_same_results(tiny_model, tmp_path):
    """build_index("Flat") writes the chunks straight into the index's storage (one copy of the vectors): the
    result must be the index that adding the whole array gives, with a last chunk shorter than the others."""
    from md2pr_st.index import CorpusEmbeddingCache

    ids = [f"d{i}" for i in range(47)]
    corpus = Dataset.from_dict({"id": ids, "text": [f"passage {i} about topic {i % 5}" for i in range(47)]})
    cached = CorpusEmbeddingCache(tiny_model, corpus, tmp_path / "cache", chunk_size=10, show_progress_bar=False)
    in_place = cached.build_index("Flat")
    reference = FaissIndex.build(cached.compute(), ids, "Flat")
    assert len(in_place) == 47 and in_place.factory == "Flat"
    queries = random_unit(6, cached.compute().shape[1], seed=3)
    (scores, found), (ref_scores, ref_found) = in_place.search(queries, 47), reference.search(queries, 47)
    assert found == ref_found
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    in_place.save(tmp_path / "index")  # and it saves and loads like any index
    assert FaissIndex.load(tmp_path / "index").search(queries, 5)[1] == [row[:5] for row in ref_found]


def clustered(n, d, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    centers = random_unit(20, d, seed + 1)
    x = centers[rng.integers(0, 20, n)] + noise * rng.standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_calibrate_raises_ef_search_until_the_graph_matches_exact_search():
    docs = clustered(3000, 32)
    queries = clustered(300, 32, seed=5)
    ids = [str(i) for i in range(3000)]
    index = FaissIndex.build(docs, ids, "HNSW8", ef_search=1, ef_construction=16)
    sims = queries @ docs.T
    exact = np.argsort(-sims, axis=1)[:, :10]

    def recall():
        _, found = index.search_rows(queries, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])

    before = recall()
    result = index.calibrate(queries, k=10, max_queries=100)
    assert before < 0.99 and result["ef_search"] > 1 and not result["exact"]
    assert result["queries"] == 100 and result["recall"] >= 0.99
    assert recall() >= 0.98  # on all 300 queries, measured independently (numpy), not only the 100 it tuned on
    assert FaissIndex.build(docs, ids).calibrate(queries) is None  # exact search: nothing to tune


def test_calibrate_falls_back_to_exact_search_when_the_graph_cannot_reach_the_target(caplog):
    docs, queries = random_unit(2000, 64, 0), random_unit(50, 64, 1)  # no neighbourhood structure: HNSW's worst case
    ids = [str(i) for i in range(2000)]
    index = FaissIndex.build(docs, ids, "HNSW4", ef_search=1, ef_construction=8)
    with caplog.at_level("WARNING", logger="md2pr_st.index.faiss_index"):
        result = index.calibrate(queries, k=10, max_ef_search=2)
    assert result["exact"] and result["recall"] < 0.99 and "searching exactly" in caplog.text
    scores, found = index.search(queries, 10)
    exact_scores, exact_found = FaissIndex.build(docs, ids).search(queries, 10)
    assert found == exact_found
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)


def test_auto_mining_and_evaluation_tune_the_graph_on_their_queries(tiny_model, monkeypatch):
    from md2pr_st.data import RetrievalData
    from md2pr_st.evaluation import RetrievalEvaluator
    from md2pr_st.index import faiss_index
    from md2pr_st.mining import mine_hard_negatives

    texts = [f"passage {i} about topic {i % 7} and thing {i % 11}" for i in range(120)]
    corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(120)], "text": texts})
    pairs = Dataset.from_dict({"query": [f"topic {i} thing {i}" for i in range(7)], "positive": texts[:7]})
    exact = mine_hard_negatives(pairs, corpus, tiny_model, num_negatives=3, range_max=10, factory="Flat")
    _, flat_stats = mine_hard_negatives(pairs, corpus, tiny_model, num_negatives=3, range_max=10, return_stats=True)
    assert flat_stats.index_calibration is None  # auto below the size is exact search: nothing to tune
    monkeypatch.setattr(faiss_index, "AUTO_HNSW_MIN_SIZE", 100)
    mined, stats = mine_hard_negatives(pairs, corpus, tiny_model, num_negatives=3, range_max=10, return_stats=True)
    calibration = stats.index_calibration
    assert calibration["k"] == 11 and calibration["ef_search"] >= 11  # tuned at the depth mining searches (10 + 1)
    assert not calibration["exact"] and calibration["recall"] == 1.0
    assert mined.to_dict() == exact.to_dict()

    queries = Dataset.from_dict({"id": [f"q{i}" for i in range(7)], "text": pairs["query"]})
    data = RetrievalData(corpus, queries, {f"q{i}": {f"d{i}": 3} for i in range(7)})
    flat = RetrievalEvaluator(data, ["ndcg@10"], factory="Flat", show_progress_bar=False).evaluate(tiny_model)[0]
    auto = RetrievalEvaluator(data, ["ndcg@10"], show_progress_bar=False).evaluate(tiny_model)[0]
    assert "index_calibration" not in flat and auto["index_calibration"]["k"] == 10
    assert auto["index_calibration"]["recall"] == 1.0 and not auto["index_calibration"]["exact"]
    assert auto["ndcg@10"] == pytest.approx(flat["ndcg@10"], abs=1e-9)
    given = FaissIndex.from_model(tiny_model, corpus, "HNSW32", ef_search=20)  # passed in: searched as set up
    RetrievalEvaluator(data, ["ndcg@10"], index=given, show_progress_bar=False).evaluate(tiny_model, index=given)
    assert given.index.hnsw.efSearch == 20 and given.exact_fallback is None
    assert given.calibrate(np.zeros((0, given.dim), dtype="float32")) is None  # no queries: nothing to tune
