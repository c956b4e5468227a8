from __future__ import annotations

import json

import pytest
from datasets import Dataset
from transformers import TrainerCallback

import md2pr_st.teacher.training as teacher_training
from md2pr_st.data import RetrievalData
from md2pr_st.teacher import TEACHER_REPORT, reranking_gap, teacher_training_pairs, train_teacher

CORPUS = Dataset.from_dict(
    {
        "id": ["d0", "d1", "d2", "d3", "d4", "d5"],
        "text": [
            "paris is the capital of france",
            "tea is a drink",
            "the python is a snake",
            "java is an island",
            "coffee from java",
            "cats and dogs",
        ],
    }
)


def toy_data() -> RetrievalData:
    return RetrievalData(
        corpus=CORPUS,
        queries=Dataset.from_dict({"id": ["q1", "q2"], "text": ["capital of france", "what is java"]}),
        qrels={"q1": {"d0": 3, "d1": 0}, "q2": {"d3": 2, "d4": 1}},
    )


def test_training_pairs_have_graded_labels_and_unjudged_random_negatives():
    pairs = teacher_training_pairs(toy_data(), random_negatives=2, seed=0)
    assert len(pairs) == 4 + 2 * 2
    judged = {(q, p): y for q, p, y in zip(pairs["query"], pairs["passage"], pairs["label"])}
    assert judged[("capital of france", "paris is the capital of france")] == 1.0
    assert judged[("what is java", "java is an island")] == pytest.approx(2 / 3)
    assert judged[("what is java", "coffee from java")] == pytest.approx(1 / 3)
    assert judged[("capital of france", "tea is a drink")] == 0.0
    q1_random = [p for q, p, y in zip(pairs["query"], pairs["passage"], pairs["label"]) if q == "capital of france"][
        2:
    ]
    assert len(q1_random) == 2 and not {"paris is the capital of france", "tea is a drink"} & set(q1_random)


def test_training_pairs_errors():
    data = toy_data()
    with pytest.raises(ValueError, match="random_negatives must be >= 0"):
        teacher_training_pairs(data, random_negatives=-1)
    zero = RetrievalData(data.corpus, data.queries, {"q1": {"d0": 0}, "q2": {"d3": 0}})
    with pytest.raises(ValueError, match="no judgement has a positive grade"):
        teacher_training_pairs(zero)
    with pytest.raises(ValueError, match="needs columns query, passage, label"):
        train_teacher(Dataset.from_dict({"query": ["a"], "text": ["b"]}), "unused")


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated crash")


def test_train_teacher_saves_reports_and_resumes(tiny_cross_encoder_path, tiny_model_path, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoder

    out = tmp_path / "teacher"
    kwargs = dict(
        base_model=tiny_cross_encoder_path, max_length=32, epochs=2, batch_size=2, save_steps=2, random_negatives=1,
        show_progress_bar=False,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train_teacher(toy_data(), out, callbacks=[Crash()], **kwargs)
    assert not out.exists()  # nothing half-written
    assert (tmp_path / "teacher.checkpoints" / "checkpoint-2").is_dir()

    path = train_teacher(toy_data(), out, dev=toy_data(), student=tiny_model_path, **kwargs)
    report = json.loads((path / TEACHER_REPORT).read_text())
    # 6 pairs / batch 2 = 3 steps per epoch, 2 epochs; resumed after step 2.
    assert (report["resumed_from"], report["steps"], report["train_pairs"]) == ("checkpoint-2", 6, 6)
    assert report["dev"]["gap"] == pytest.approx(report["dev"]["teacher"] - report["dev"]["student"], abs=1e-4)
    assert report["dev"]["n_pairs"] == 4
    assert not (tmp_path / "teacher.checkpoints").exists()
    card = (path / "README.md").read_text(encoding="utf-8")  # the host's card, without the data's texts
    assert "### Training Dataset" in card and not [text for text in CORPUS["text"] if text in card]
    trained = CrossEncoder(str(path))
    assert trained.num_labels == 1
    base = CrossEncoder(str(tiny_cross_encoder_path))
    pair = [("capital of france", "paris is the capital of france")]
    assert trained.predict(pair)[0] != pytest.approx(base.predict(pair)[0], abs=1e-7)  # the weights moved
    mtime = (path / TEACHER_REPORT).stat().st_mtime
    assert train_teacher(toy_data(), out, **kwargs) == path  # a trained teacher is reused, not retrained
    assert (path / TEACHER_REPORT).stat().st_mtime == mtime


def test_reranking_gap_with_a_perfect_and_an_inverted_teacher(tiny_cross_encoder_path, tiny_model_path, monkeypatch):
    from md2pr_st.teacher import Teacher

    data = toy_data()
    grades = {CORPUS["text"][i]: g for q in data.qrels.values() for d, g in q.items() for i in [int(d[1])]}
    monkeypatch.setattr(Teacher, "score", lambda self, pairs, **kw: __import__("numpy").array(
        [grades[d] for _, d in pairs], dtype="float32"))  # fmt: skip
    perfect = reranking_gap(tiny_cross_encoder_path, tiny_model_path, data)
    assert perfect["teacher"] == 1.0
    assert perfect["gap"] == pytest.approx(1.0 - perfect["student"], abs=1e-4)
    monkeypatch.setattr(Teacher, "score", lambda self, pairs, **kw: -__import__("numpy").array(
        [grades[d] for _, d in pairs], dtype="float32"))  # fmt: skip
    inverted = reranking_gap(tiny_cross_encoder_path, tiny_model_path, data)
    # trec_eval nDCG (linear gains). q1 ranks d1 (0) above d0 (3): 3 / log2(3) / 3 = 0.6309. q2 ranks d4 (1) above
    # d3 (2): (1 + 2 / log2(3)) / (2 + 1 / log2(3)) = 0.8597. Mean 0.7453.
    assert inverted["teacher"] == pytest.approx(0.7453, abs=1e-4)
    assert teacher_training.TEACHER_REPORT == "md2pr_teacher.json"
