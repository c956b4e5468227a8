from __future__ import annotations

import json
import subprocess

import pytest
from datasets import Dataset

from md2pr_st.data import RetrievalData, load_beir, load_rag24, load_retrieval_data, split_topics
from md2pr_st.data import rag24 as data_mod
from md2pr_st.data.rag24 import fetch_rag24_sdist, rag24_dataset_dict


def write_beir(folder, corpus, queries, qrels, split="test"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, d, g in qrels]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


CORPUS = [
    {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
    {"_id": "d2", "title": "", "text": "Tea is a drink."},
    {"_id": "d3", "text": "Python is a snake."},
]
QUERIES = [{"_id": "q1", "text": "capital of france"}, {"_id": "q2", "text": "python"}, {"_id": "q3", "text": "x"}]


def test_split_topics_is_deterministic_disjoint_and_complete():
    topics = [f"2024-{i}" for i in range(301)]
    a, b = split_topics(topics), split_topics(list(reversed(topics)))
    assert a == b
    assert {k: len(v) for k, v in a.items()} == {"train": 181, "dev": 60, "test": 60}
    assert set(a["train"]).isdisjoint(a["dev"]) and set(a["train"]).isdisjoint(a["test"])
    assert set(a["dev"]).isdisjoint(a["test"])
    assert sorted(a["train"] + a["dev"] + a["test"]) == sorted(topics)
    assert split_topics(topics, seed=14) != a


def test_load_beir_reads_titles_grades_and_keeps_judged_queries(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 2), ("q1", "d2", 0), ("q2", "d3", 1)])
    data = load_beir(folder)
    assert data.corpus["id"] == ["d1", "d2", "d3"]
    assert data.corpus["text"][0] == "Paris Paris is the capital of France."
    assert data.corpus["text"][1] == "Tea is a drink."
    assert data.queries["id"] == ["q1", "q2"]  # q3 has no qrels in this split
    assert data.qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    assert data.relevant("q1", 1) == ["d1"]
    assert load_retrieval_data(str(folder), "test").qrels == data.qrels


def test_load_beir_missing_files_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus.jsonl is missing"):
        load_beir(tmp_path)
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 1)])
    with pytest.raises(FileNotFoundError, match=r"split 'dev'.*Splits found.*\['test'\]"):
        load_beir(folder, "dev")


def test_load_beir_bad_rows(tmp_path):
    folder = write_beir(tmp_path / "dup", CORPUS + [CORPUS[0]], QUERIES, [("q1", "d1", 1)])
    with pytest.raises(ValueError, match="1 duplicate ids in the corpus.*d1"):
        load_beir(folder)
    folder = write_beir(tmp_path / "empty", [], QUERIES, [("q1", "d1", 1)])
    with pytest.raises(ValueError, match="the corpus is empty"):
        load_beir(folder)
    folder = write_beir(tmp_path / "none", [{"_id": "d1", "text": None}], QUERIES, [("q1", "d1", 1)])
    with pytest.raises(ValueError, match="empty or missing text.*d1"):
        load_beir(folder)
    folder = write_beir(tmp_path / "unknown_doc", CORPUS, QUERIES, [("q1", "d9", 1)])
    with pytest.raises(ValueError, match="not in the corpus.*d9"):
        load_beir(folder)
    folder = write_beir(tmp_path / "grade", CORPUS, QUERIES, [("q1", "d1", "high")])
    with pytest.raises(ValueError, match="not an integer grade"):
        load_beir(folder)


def test_retrieval_data_rejects_queries_without_qrels_and_bad_columns():
    corpus = Dataset.from_dict({"id": ["d1"], "text": ["a"]})
    queries = Dataset.from_dict({"id": ["q1", "q2"], "text": ["x", "y"]})
    with pytest.raises(ValueError, match="1 queries have no qrels.*q2"):
        RetrievalData(corpus, queries, {"q1": {"d1": 1}})
    with pytest.raises(ValueError, match="qrels name 1 queries that are not in the queries.*q9"):
        RetrievalData(corpus, queries, {"q1": {"d1": 1}, "q2": {"d1": 0}, "q9": {"d1": 1}})
    with pytest.raises(ValueError, match="lacks \\['text'\\]"):
        RetrievalData(corpus, Dataset.from_dict({"id": ["q1"], "query": ["x"]}), {"q1": {"d1": 1}})


def test_unknown_split_and_dataset_errors():
    with pytest.raises(ValueError, match="Unknown split 'validation'.*train, dev, test"):
        load_rag24("validation")
    with pytest.raises(ValueError, match="Unknown qrels set"):
        load_rag24("test", qrels="trec")
    with pytest.raises(ValueError, match="Unknown dataset 'msmarco'"):
        load_retrieval_data("msmarco")


def test_pip_failure_says_how_to_pass_a_tarball(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.delenv("MD2PR_RAG24_SDIST", raising=False)
    monkeypatch.setattr(data_mod.subprocess, "run", fail)
    with pytest.raises(RuntimeError, match=r"(?s)could not download.*No matching distribution.*--sdist PATH"):
        fetch_rag24_sdist(tmp_path)
    assert not any((tmp_path / "downloads").iterdir())  # nothing half-written left behind


def test_wrong_tarball_is_refused(tmp_path):
    bogus = tmp_path / "ir_axioms-1.2.5.tar.gz"
    bogus.write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="sha256.*corrupt or another version"):
        fetch_rag24_sdist(sdist_path=bogus)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch_rag24_sdist(sdist_path=tmp_path / "missing.tar.gz")


# ---- the real data (downloads the 28 MB sdist once into $MD2PR_CACHE or ~/.cache/md2pr_st) ----


@pytest.mark.slow
def test_rag24_counts_and_splits():
    full = load_rag24("all")
    assert len(full.queries) == 301
    assert len(full.corpus) == 6011
    assert sum(len(docs) for docs in full.qrels.values()) == 6160  # UMBRELA judgements of corpus passages
    grades = [g for docs in full.qrels.values() for g in docs.values()]
    assert {g: grades.count(g) for g in range(4)} == {0: 409, 1: 1957, 2: 2231, 3: 1563}
    nist = load_rag24("all", qrels="nist")
    assert len(nist.queries) == 86
    assert sum(len(docs) for docs in nist.qrels.values()) == 1709
    splits = {name: load_rag24(name) for name in ("train", "dev", "test")}
    ids = {name: set(d.queries["id"]) for name, d in splits.items()}
    assert {name: len(v) for name, v in ids.items()} == {"train": 181, "dev": 60, "test": 60}
    assert not (ids["train"] & ids["dev"]) and not (ids["train"] & ids["test"]) and not (ids["dev"] & ids["test"])
    assert ids["train"] | ids["dev"] | ids["test"] == set(full.queries["id"])
    assert all(d.corpus is not None and len(d.corpus) == 6011 for d in splits.values())


@pytest.mark.slow
def test_rag24_cache_is_reused_and_rebuilt_when_corrupt(tmp_path):
    sdist = fetch_rag24_sdist()  # the shared download
    first = rag24_dataset_dict(tmp_path, sdist_path=sdist)
    first_ids, first_texts = first["corpus"]["id"], first["corpus"]["text"]
    del first
    manifest = tmp_path / "rag24" / "md2pr_manifest.json"
    assert json.loads(manifest.read_text())["sdist_sha256"] == data_mod.RAG24_SDIST_SHA256
    stamp = manifest.stat().st_mtime_ns
    again = rag24_dataset_dict(tmp_path, sdist_path=sdist)
    assert manifest.stat().st_mtime_ns == stamp  # served from the cache, not rebuilt
    assert again["corpus"]["id"] == first_ids
    del again
    for arrow in (tmp_path / "rag24" / "data" / "corpus").glob("*.arrow"):
        arrow.unlink()  # a new inode: the pages mapped by the loads above stay valid
        arrow.write_bytes(b"garbage")
    rebuilt = rag24_dataset_dict(tmp_path, sdist_path=sdist)
    assert rebuilt["corpus"]["text"] == first_texts
