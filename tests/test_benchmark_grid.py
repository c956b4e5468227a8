"""The quality grid (benchmarks/quality.py) runs the teacher only when it is the training that scored its rows,
makes a headline run again when dev chooses another recipe, and encodes the shared corpus once for a model that
is not trained per fold."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_grid", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _teacher(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": torch.full((4,), value)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    return folder


def test_teacher_weights_tell_two_trainings_apart_and_ignore_other_files(quality, tmp_path):
    first, second = _teacher(tmp_path / "first", 1.0), _teacher(tmp_path / "second", 2.0)
    digest = quality.teacher_weights(first)
    assert digest != quality.teacher_weights(second)
    (first / "md2pr_teacher.json").write_text('{"train_seconds": 1}')  # reports and configs are not the weights
    assert quality.teacher_weights(first) == digest
    with pytest.raises(RuntimeError, match="holds no \\*.safetensors weights"):
        quality.teacher_weights(tmp_path)


def test_a_recipe_that_runs_the_teacher_is_refused_another_trainings_scores(quality, tmp_path):
    first, second = _teacher(tmp_path / "first", 1.0), _teacher(tmp_path / "second", 2.0)
    recorded = tmp_path / "A" / "fold0" / quality.RECORD
    # no candidates recorded yet: the teacher scores them, nothing to compare with
    assert quality.checked_teacher(lambda: first, recorded) == first
    recorded.parent.mkdir(parents=True)
    record = quality.candidates_record("student", first, quality.teacher_weights(first), "train", quality.Budget(), [])
    recorded.write_text(json.dumps(record))  # what candidates_for writes after its scoring pass
    assert quality.checked_teacher(lambda: first, recorded) == first
    with pytest.raises(quality.GridRefusal, match="scores of another training of the teacher, not of .*second"):
        quality.checked_teacher(lambda: second, recorded)
    del record["teacher_weights"]  # a file recorded before the weights were
    recorded.write_text(json.dumps(record))
    with pytest.raises(quality.GridRefusal, match="scores with no record of the teacher"):
        quality.checked_teacher(lambda: first, recorded)


def test_only_the_recipes_that_run_the_teacher_are_checked(quality):
    needs = {name for name in quality.RECIPES if quality.runs_teacher(name)}
    assert {
        "teacher_rerank",
        "md2pr_2_rounds",
        "md2pr_word_0.1",
        "md2pr_word_middle",
        "md2pr_word_0.1_online",
    } <= needs
    assert not needs & {"base", "mpnet_as_is", "mnrl", "margin_mse", "distill_kl", "gist", "md2pr", "md2pr_umbrela"}


def test_a_result_chosen_on_dev_is_made_again_once_dev_chooses_another_recipe(quality, tmp_path):
    fold = tmp_path / "A" / "fold0"

    def made(run: str, dev: float, chosen: str | None = None) -> Path:
        (fold / run).mkdir(parents=True)
        info = {"chosen": chosen} if chosen else {}
        (fold / run / "result.json").write_text(json.dumps({"dev": {"ndcg@10": dev}, "info": info}))
        return fold / run

    made("md2pr-s13", 0.70)
    made("md2pr_fixed-s13", 0.72)
    best = made("md2pr_best-s14", 0.71, chosen="md2pr_fixed")
    assert quality.chosen_on_dev(fold, quality.CHOSEN["md2pr_best"]) == "md2pr_fixed"
    assert quality.result_stands(best, "md2pr_fixed")
    made("md2pr_no_filter-s13", 0.75)  # a recipe run since does better on dev
    chosen = quality.chosen_on_dev(fold, quality.CHOSEN["md2pr_best"])
    assert chosen == "md2pr_no_filter"
    assert not quality.result_stands(best, chosen)
    assert not (best / "result.json").exists()  # moved aside, not lost
    assert json.loads((best / "result.md2pr_fixed.json").read_text())["info"]["chosen"] == "md2pr_fixed"
    assert quality.result_stands(fold / "md2pr-s13", None)  # a recipe not chosen on dev stands as made
    assert not quality.result_stands(fold / "gist-s13", None)


def test_a_model_not_trained_per_fold_encodes_the_shared_corpus_once(quality, tiny_model_path, tmp_path, monkeypatch):
    """`evaluate(..., cache_dir=...)` keeps the corpus embeddings: a second fold (the same corpus) encodes no
    passage and gets the metrics of the first, which equal those of an encoding without the cache."""
    from test_pipeline import beir_with_splits

    from md2pr_st.data import load_retrieval_data

    data = beir_with_splits(tmp_path / "data")
    test, dev = (load_retrieval_data(str(data), split) for split in ("test", "dev"))
    budget = quality.Budget()
    uncached = quality.evaluate(str(tiny_model_path), test, None, budget, dev=dev)
    cache = tmp_path / "embeddings"
    first = quality.evaluate(str(tiny_model_path), test, None, budget, dev=dev, cache_dir=cache)
    chunks = sorted(cache.rglob("chunk_*.npy"))
    assert chunks, "the corpus embeddings were not kept"
    stamps = [path.stat().st_mtime_ns for path in chunks]

    from md2pr_st.index import embedding_cache, faiss_index

    def queries_only(model, texts, kind, *args, **kwargs):
        assert kind == "query", "the corpus was encoded again"
        return encode(model, texts, kind, *args, **kwargs)

    encode = faiss_index.encode
    monkeypatch.setattr(embedding_cache, "encode", queries_only)
    monkeypatch.setattr(faiss_index, "encode", queries_only)
    second = quality.evaluate(str(tiny_model_path), test, None, budget, dev=dev, cache_dir=cache)
    assert [path.stat().st_mtime_ns for path in sorted(cache.rglob("chunk_*.npy"))] == stamps  # nothing re-encoded
    assert second == first
    means = [(split, metric) for split in ("umbrela", "dev") for metric in quality.METRICS]
    for split, metric in means:
        assert first[split][metric] == pytest.approx(uncached[split][metric], abs=1e-6), (split, metric)
