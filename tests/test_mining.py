from __future__ import annotations

import math

import numpy as np
import pytest
from datasets import Dataset

import md2pr_st.index.embedding_cache as embedding_cache
import md2pr_st.mining as mining
from md2pr_st.data import RetrievalData, corpus_fingerprint, training_pairs
from md2pr_st.index import CorpusEmbeddingCache
from md2pr_st.mining import mine_hard_negatives, negative_columns

# Texts on the unit circle: the cosine between two texts falls with their angle difference, so the FAISS ranking
# of the corpus is known exactly. For the France query (angle 0): p = pcopy > n1 > n2 > ... > n6 > c.
ANGLES = {
    "what is the capital of france": 0.0,
    "Paris is the capital of France.": 0.05,
    "Lyon is in France.": 0.10,
    "Marseille is in France.": 0.20,
    "France has many cities.": 0.30,
    "Berlin is in Germany.": 0.40,
    "Tea is a drink.": 0.50,
    "Cats purr.": 0.60,
    "how do cats sleep": 1.20,
    "Cats sleep a lot.": 1.25,
}


def vec(text: str) -> np.ndarray:
    a = ANGLES[text]
    return np.array([math.cos(a), math.sin(a)], dtype=np.float32)


@pytest.fixture
def fake_encode(monkeypatch):
    """Replace the student's encoder with the hand-made vectors above, counting calls per kind."""
    calls = {"query": 0, "document": 0}

    def encode(model, texts, kind="document", batch_size=64, show_progress_bar=None, across_processes=None):
        calls[kind] += 1
        return np.stack([vec(t) for t in texts])

    monkeypatch.setattr(mining, "encode", encode)
    monkeypatch.setattr(embedding_cache, "encode", encode)
    return calls


CORPUS = Dataset.from_dict(
    {
        "id": ["p", "n1", "n2", "n3", "n4", "n5", "n6", "pcopy", "c"],
        "text": [
            "Paris is the capital of France.",
            "Lyon is in France.",
            "Marseille is in France.",
            "France has many cities.",
            "Berlin is in Germany.",
            "Tea is a drink.",
            "Cats purr.",
            "Paris is the capital of France.",  # the positive's text under another id: must be excluded too
            "Cats sleep a lot.",
        ],
    }
)
Q = "what is the capital of france"
POS = "Paris is the capital of France."


def test_top_sampling_excludes_positives_and_respects_the_rank_range(tiny_model, fake_encode):
    pairs = Dataset.from_dict({"query": [Q], "positive": [POS]})
    mined, stats = mine_hard_negatives(
        pairs,
        CORPUS,
        tiny_model,
        num_negatives=2,
        range_min=1,
        range_max=5,
        return_stats=True,
        show_progress_bar=False,
    )
    # Ranking after removing p and pcopy: n1, n2, n3, n4, n5, ... ; ranks 1..4 -> top 2 = n2, n3.
    assert mined.column_names == ["query", "positive", "negative_1", "negative_2"]
    assert mined[0] == {
        "query": Q,
        "positive": POS,
        "negative_1": "Marseille is in France.",
        "negative_2": "France has many cities.",
    }
    assert stats.positives_excluded == 2
    assert (stats.rows_out, stats.negatives, stats.dropped_rows) == (1, 2, 0)


def test_several_positives_share_negatives_and_are_all_excluded(tiny_model, fake_encode):
    pairs = Dataset.from_dict(
        {"query": [Q, Q, "how do cats sleep"], "positive": [POS, "Lyon is in France.", "Cats sleep a lot."]}
    )
    mined = mine_hard_negatives(pairs, CORPUS, tiny_model, num_negatives=2, range_max=10, show_progress_bar=False)
    assert mined["positive"] == [POS, "Lyon is in France.", "Cats sleep a lot."]
    # Query 1: p, pcopy and n1 are positives, so the two best negatives are n2, n3 for both rows.
    assert mined["negative_1"][:2] == ["Marseille is in France."] * 2
    assert mined["negative_2"][:2] == ["France has many cities."] * 2
    # The cats query (angle 1.2): nearest non-positives are Cats purr (0.6) and Tea (0.5).
    assert (mined[2]["negative_1"], mined[2]["negative_2"]) == ("Cats purr.", "Tea is a drink.")


def test_list_positive_and_positive_ids(tiny_model, fake_encode):
    pairs = Dataset.from_dict({"query": [Q], "positive": [[POS, "Lyon is in France."]], "positive_id": [["p", "n1"]]})
    mined = mine_hard_negatives(
        pairs, CORPUS, tiny_model, num_negatives=1, range_max=5, with_ids=True, show_progress_bar=False
    )
    assert mined["positive_id"] == ["p", "n1"]
    assert mined["negative_ids"] == [["n2"], ["n2"]]


def test_random_sampling_is_seeded_in_range_and_in_rank_order(tiny_model, fake_encode):
    pairs = Dataset.from_dict({"query": [Q], "positive": [POS]})
    kwargs = dict(num_negatives=3, range_min=1, range_max=6, sampling="random", with_ids=True, show_progress_bar=False)
    first = mine_hard_negatives(pairs, CORPUS, tiny_model, seed=3, **kwargs)["negative_ids"][0]
    again = mine_hard_negatives(pairs, CORPUS, tiny_model, seed=3, **kwargs)["negative_ids"][0]
    window = ["n2", "n3", "n4", "n5", "n6"]  # ranks 1..5 after removing the positives
    assert first == again
    assert set(first) <= set(window) and len(set(first)) == 3
    assert first == sorted(first, key=window.index)
    draws = {
        tuple(mine_hard_negatives(pairs, CORPUS, tiny_model, seed=s, **kwargs)["negative_ids"][0]) for s in range(8)
    }
    assert len(draws) > 1


def test_queries_without_enough_candidates_are_dropped_and_counted(tiny_model, fake_encode):
    corpus = CORPUS.select(range(3))  # p, n1, n2
    pairs = Dataset.from_dict({"query": [Q, Q], "positive": [POS, "Lyon is in France."]})
    mined, stats = mine_hard_negatives(
        pairs, corpus, tiny_model, num_negatives=2, range_max=5, return_stats=True, show_progress_bar=False
    )
    assert len(mined) == 0
    assert (stats.queries, stats.dropped_queries, stats.dropped_rows) == (1, 1, 2)


def test_bad_input_gives_clear_errors(tiny_model, fake_encode):
    pairs = Dataset.from_dict({"query": [Q], "positive": [POS]})
    with pytest.raises(ValueError, match="lacks the column"):
        mine_hard_negatives(pairs.rename_column("positive", "answer"), CORPUS, tiny_model)
    with pytest.raises(ValueError, match="has no positive"):
        mine_hard_negatives(Dataset.from_dict({"query": [Q], "positive": [""]}), CORPUS, tiny_model)
    with pytest.raises(ValueError, match="has no positive"):
        mine_hard_negatives(Dataset.from_dict({"query": [Q], "positive": [[]]}), CORPUS, tiny_model)
    with pytest.raises(ValueError, match="Cannot take 5 negatives"):
        mine_hard_negatives(pairs, CORPUS, tiny_model, num_negatives=5, range_min=2, range_max=6)
    with pytest.raises(ValueError, match="corpus needs columns"):
        mine_hard_negatives(pairs, CORPUS.rename_column("id", "_id"), tiny_model)
    with pytest.raises(ValueError, match="sampling must be"):
        mine_hard_negatives(pairs, CORPUS, tiny_model, sampling="hardest")


def test_interrupted_run_resumes_without_recomputing_finished_chunks(tiny_model, fake_encode, monkeypatch, tmp_path):
    pairs = Dataset.from_dict({"query": [Q], "positive": [POS]})
    original = CorpusEmbeddingCache._encode_chunk
    encoded: list[int] = []

    def crash_on_third(self, chunk, *args):
        if len(encoded) == 2:
            raise KeyboardInterrupt("simulated crash")
        encoded.append(chunk)
        return original(self, chunk, *args)

    monkeypatch.setattr(CorpusEmbeddingCache, "_encode_chunk", crash_on_third)
    kwargs = dict(num_negatives=2, range_max=5, cache_dir=tmp_path, chunk_size=2, show_progress_bar=False)
    with pytest.raises(KeyboardInterrupt):
        mine_hard_negatives(pairs, CORPUS, tiny_model, **kwargs)
    assert encoded == [0, 1]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.glob("chunk_*.npy")) == ["chunk_00000.npy", "chunk_00001.npy"]
    assert not list(folder.glob(".chunk_*"))  # no half-written files left behind

    monkeypatch.setattr(CorpusEmbeddingCache, "_encode_chunk", original)
    fake_encode["document"] = 0
    mined, stats = mine_hard_negatives(pairs, CORPUS, tiny_model, return_stats=True, **kwargs)
    # 9 passages in chunks of 2 -> 5 chunks; 2 were finished, so exactly 3 are encoded now.
    assert (fake_encode["document"], stats.chunks_encoded, stats.chunks_reused) == (3, 3, 2)
    reference = mine_hard_negatives(pairs, CORPUS, tiny_model, num_negatives=2, range_max=5, show_progress_bar=False)
    assert mined.to_dict() == reference.to_dict()

    fake_encode["document"] = 0
    _, stats = mine_hard_negatives(pairs, CORPUS, tiny_model, return_stats=True, **kwargs)
    assert (fake_encode["document"], stats.chunks_reused) == (0, 5)


def test_cache_key_changes_with_model_and_corpus(tiny_model, fake_encode, tmp_path, tiny_model_path):
    from sentence_transformers import SentenceTransformer

    other = SentenceTransformer(str(tiny_model_path), device="cpu")
    with __import__("torch").no_grad():
        next(other.parameters()).add_(1.0)  # a different student state (the next round)
    a = CorpusEmbeddingCache(tiny_model, CORPUS, tmp_path, chunk_size=4)
    b = CorpusEmbeddingCache(other, CORPUS, tmp_path, chunk_size=4)
    c = CorpusEmbeddingCache(tiny_model, CORPUS.select(range(8)), tmp_path, chunk_size=4)
    assert len({a.path, b.path, c.path}) == 3
    embeddings = a.compute()
    assert embeddings.shape == (9, 2) and a.finished_chunks() == [0, 1, 2]
    np.testing.assert_allclose(embeddings[0], vec(POS))


def test_corrupt_chunk_is_recomputed(tiny_model, fake_encode, tmp_path):
    cache = CorpusEmbeddingCache(tiny_model, CORPUS, tmp_path, chunk_size=4)
    cache.compute()
    (cache.path / "chunk_00001.npy").write_bytes(b"not a numpy file")
    again = CorpusEmbeddingCache(tiny_model, CORPUS, tmp_path, chunk_size=4)
    assert again.finished_chunks() == [0, 2]
    again.compute()
    assert again.encoded_chunks == 1


def test_corpus_fingerprint_is_independent_of_the_chunk_size():
    assert corpus_fingerprint(CORPUS, chunk_size=4) == corpus_fingerprint(CORPUS, chunk_size=100)
    changed = CORPUS.map(lambda row: {"text": row["text"] + ("!" if row["id"] == "c" else "")})
    assert corpus_fingerprint(changed) != corpus_fingerprint(CORPUS)


def test_negative_columns_order():
    assert negative_columns(["negative_3", "query", "negative_1", "negative_12"]) == [
        "negative_1",
        "negative_3",
        "negative_12",
    ]


def test_exclude_ids_keeps_known_positives_without_a_row_out_of_the_negatives(tiny_model, fake_encode):
    pairs = Dataset.from_dict({"query": [Q], "positive": [POS], "exclude_ids": [["n1", "n3", "not-in-corpus"]]})
    mined = mine_hard_negatives(pairs, CORPUS, tiny_model, num_negatives=2, range_max=10, show_progress_bar=False)
    # Ranking without p, pcopy (the positive) and n1, n3 (excluded): n2, n4, ...
    assert (mined[0]["negative_1"], mined[0]["negative_2"]) == ("Marseille is in France.", "Berlin is in Germany.")
    assert "exclude_ids" not in mined.column_names


def test_training_pairs_from_graded_qrels():
    data = RetrievalData(
        corpus=Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris.", "France.", "Tea."]}),
        queries=Dataset.from_dict({"id": ["q1", "q2"], "text": ["capital of france", "tea"]}),
        qrels={"q1": {"a": 2, "b": 3}, "q2": {"c": 1}},
    )
    with pytest.raises(ValueError, match="1 queries have no passage judged at grade >= 2"):
        training_pairs(data)
    pairs = training_pairs(data, skip_queries_without_positive=True)
    assert pairs["positive_id"] == ["b", "a"]  # highest grade first
    assert training_pairs(data, positives="best", skip_queries_without_positive=True)["positive"] == ["France."]
    assert training_pairs(data, min_grade=1)["query_id"] == ["q1", "q1", "q2"]
    # One row for the best positive, but the other positive is still named for exclusion from mining.
    best = training_pairs(data, positives=1, skip_queries_without_positive=True)
    assert (best["positive_id"], best["exclude_ids"]) == (["b"], [["a", "b"]])
    assert training_pairs(data, positives="2", skip_queries_without_positive=True)["positive_id"] == ["b", "a"]
    for bad in ("some", 0, -1, 1.5):
        with pytest.raises(ValueError, match="positives must be 'all', 'best' or a positive integer"):
            training_pairs(data, positives=bad, skip_queries_without_positive=True)


def test_real_tiny_model_end_to_end(tiny_model, tmp_path):
    """No fake encoder: the tiny random student, the FAISS index and the disk cache together."""
    pairs = Dataset.from_dict({"query": [Q, "how do cats sleep"], "positive": [POS, "Cats sleep a lot."]})
    mined = mine_hard_negatives(
        pairs,
        CORPUS,
        tiny_model,
        num_negatives=3,
        range_max=6,
        cache_dir=tmp_path,
        chunk_size=4,
        show_progress_bar=False,
    )
    assert mined.column_names == ["query", "positive", "negative_1", "negative_2", "negative_3"]
    assert len(mined) == 2
    for row in mined:
        negatives = [row[f"negative_{j}"] for j in (1, 2, 3)]
        assert row["positive"] not in negatives and len(set(negatives)) == 3


@pytest.mark.slow
def test_minilm_on_a_rag24_slice(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    from md2pr_st.data import load_rag24

    data = load_rag24("train")
    data = data.subset(data.queries["id"][:3])
    pairs = training_pairs(data, positives="best", skip_queries_without_positive=True)
    judged = sorted({d for docs in data.qrels.values() for d in docs})
    row_of = {d: i for i, d in enumerate(data.corpus["id"])}
    corpus = data.corpus.select(sorted(row_of[d] for d in judged))  # the 3 topics' pools: ~60 passages
    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = 128
    mined = mine_hard_negatives(
        pairs,
        corpus,
        model,
        num_negatives=5,
        range_max=30,
        with_ids=True,
        cache_dir=tmp_path,
        chunk_size=32,
        show_progress_bar=False,
    )
    assert len(mined) == len(pairs)
    for row in mined:
        assert row["positive_id"] not in row["negative_ids"]
        # One row per query (its best passage), yet none of the query's other judged positives (grade >= 2) is
        # mined as a negative: training_pairs names them all in exclude_ids.
        judged = data.qrels[row["query_id"]]
        assert all(judged.get(d, 0) < 2 for d in row["negative_ids"])
        # What is left of the topic's own pool (grades 0-1) ranks above the other topics' passages.
        lower = [d for d, g in judged.items() if g < 2]
        own = [d for d in row["negative_ids"] if d in judged]
        assert len(own) == min(len(lower), 5) or len(own) >= 3


def test_cli_mine_writes_a_datasets_folder(tiny_model_path, tmp_path):
    from datasets import load_from_disk

    from md2pr_st.cli import main

    Dataset.from_dict({"query": [Q, "how do cats sleep"], "positive": [POS, "Cats sleep a lot."]}).save_to_disk(
        str(tmp_path / "pairs")
    )
    CORPUS.save_to_disk(str(tmp_path / "corpus"))
    argv = ["mine", "--input", str(tmp_path / "pairs"), "--corpus", str(tmp_path / "corpus"), "--output"]
    argv += [str(tmp_path / "mined"), "--model", str(tiny_model_path), "--num_negatives", "3", "--range_max", "6"]
    assert main(argv + ["--chunk_size", "4"]) == 0
    mined = load_from_disk(str(tmp_path / "mined"))
    assert mined.column_names == ["query", "positive", "negative_1", "negative_2", "negative_3"]
    assert len(mined) == 2
    stats = __import__("json").loads((tmp_path / "mined" / "md2pr_mining.json").read_text())
    assert (stats["rows_out"], stats["chunks_encoded"]) == (2, 3)
    assert len(list((tmp_path / "mined.embeddings").glob("*/chunk_*.npy"))) == 3
    assert main(["mine", "--input", str(tmp_path / "pairs"), "--output", str(tmp_path / "x")]) == 1  # no --corpus


def test_corpus_encoding_progress_moves_within_a_chunk(tiny_model, tmp_path, monkeypatch):
    """One bar over passages, updated every few batches (not once per chunk of thousands), cached chunks counted."""
    updates = []

    class Recorder:
        def __init__(self, *args, total=None, disable=False, **kwargs):
            self.total, self.disable = total, disable

        def update(self, n):
            updates.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(embedding_cache, "tqdm", Recorder)
    cache = CorpusEmbeddingCache(tiny_model, CORPUS, tmp_path, chunk_size=8, batch_size=1)
    cache.compute()
    assert updates == [4, 4, 1]  # 4 passages (4 batches of 1) at a time inside the first chunk of 8, then 1
    updates.clear()
    CorpusEmbeddingCache(tiny_model, CORPUS, tmp_path, chunk_size=8, batch_size=1).compute()
    assert updates == [8, 1]  # read from the cache: whole chunks
