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


def test_training_lists_group_each_query_and_leave_out_lists_with_nothing_to_order():
    from md2pr_st.teacher.objectives import teacher_training_lists

    pairs = Dataset.from_dict(
        {
            "query": ["q1"] * 5 + ["q2"] * 2 + ["q3"] * 3,
            "passage": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
            "label": [1.0, 0.0, 0.0, 1 / 3, 0.0, 0.0, 0.0, 1.0, 0.0, 2 / 3],
        }
    )
    lists = teacher_training_lists(pairs, list_size=2, seed=3)
    assert all(1 < len(docs) <= 2 for docs in lists["docs"])
    assert all(len(set(labels)) == 2 for labels in lists["labels"])  # q2's two 0-labels are left out
    assert "q2" not in list(lists["query"])
    seen = [(q, d, y) for q, docs, ys in zip(lists["query"], lists["docs"], lists["labels"]) for d, y in zip(docs, ys)]
    assert len(seen) == len(set(seen))  # a pair is in one list at most
    label_of = dict(zip(pairs["passage"], pairs["label"]))
    assert all(label_of[d] == y for _, d, y in seen)  # labels follow their passages through the shuffle
    whole = teacher_training_lists(pairs, list_size=8, seed=3)  # one list per query with different labels
    assert sorted(whole["query"]) == ["q1", "q3"] and sorted(len(d) for d in whole["docs"]) == [3, 5]
    with pytest.raises(ValueError, match="nothing to learn"):
        teacher_training_lists(pairs.select(range(5, 7)))


def test_teacher_loss_names_are_checked_before_any_work(tmp_path):
    from md2pr_st.config import PipelineArguments

    with pytest.raises(ValueError, match="Unknown teacher loss 'hinge'; choose one of bce, ranknet, lambda"):
        train_teacher(toy_data(), tmp_path / "t", loss="hinge")
    with pytest.raises(ValueError, match="list_size must be >= 2"):
        train_teacher(toy_data(), tmp_path / "t", loss="lambda", list_size=1)
    with pytest.raises(ValueError, match="Unknown teacher loss"):
        PipelineArguments(teacher_loss="lambdamart")
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ranknet", "listmle"])
def test_a_ranking_loss_teacher_learns_the_order_of_each_list(loss, tiny_cross_encoder_path, tmp_path, caplog):
    from sentence_transformers.cross_encoder import CrossEncoder

    from md2pr_st.evaluation import evaluate_run

    data = toy_data()
    kwargs = dict(base_model=tiny_cross_encoder_path, max_length=32, random_negatives=1, show_progress_bar=False)
    settings = dict(list_size=4, epochs=100, batch_size=8, learning_rate=3e-3, warmup_ratio=0.0, save_steps=20)
    path = train_teacher(data, tmp_path / loss, loss=loss, **settings, **kwargs)
    report = json.loads((path / TEACHER_REPORT).read_text())
    assert (report["loss"], report["list_size"]) == (loss, 4)
    assert (report["train_lists"], report["train_pairs_in_lists"]) == (2, 6)  # one list per query
    assert report["steps"] == 100  # batch 8 = 8 // 4 = 2 lists per step: both lists, one step per epoch
    assert report["last_loss"] < report["first_loss"]

    def ndcg(model) -> float:
        pairs = teacher_training_pairs(data, random_negatives=1, seed=0)
        scores = model.predict(list(zip(pairs["query"], pairs["passage"])))
        run, qrels = {}, {}
        for q, p, y, s in zip(pairs["query"], pairs["passage"], pairs["label"], scores):
            run.setdefault(q, {})[p] = float(s)
            qrels.setdefault(q, {})[p] = round(3 * y)
        return evaluate_run(run, qrels, ["ndcg@10"])["ndcg@10"]

    assert ndcg(CrossEncoder(str(path))) == pytest.approx(1.0)  # the training lists in their judged order
    assert ndcg(CrossEncoder(str(tiny_cross_encoder_path))) < 0.99
    with caplog.at_level("WARNING"):  # the same settings with another loss: retrained, not reused
        bce = train_teacher(data, tmp_path / loss, loss="bce", **settings, **kwargs)
    assert "trained with other list_size, loss: retraining" in caplog.text
    again = json.loads((bce / TEACHER_REPORT).read_text())
    assert (again["loss"], again["list_size"], again["steps"]) == ("bce", None, 100)  # 6 pairs, batch 8


def test_a_teacher_saved_before_the_loss_setting_existed_is_reused(tiny_cross_encoder_path, tmp_path):
    kwargs = dict(base_model=tiny_cross_encoder_path, max_length=32, batch_size=4, show_progress_bar=False)
    path = train_teacher(toy_data(), tmp_path / "t", **kwargs)
    report = json.loads((path / TEACHER_REPORT).read_text())
    for key in ("loss", "list_size"):
        del report["record"][key]
    (path / TEACHER_REPORT).write_text(json.dumps(report))
    mtime = (path / TEACHER_REPORT).stat().st_mtime
    assert train_teacher(toy_data(), tmp_path / "t", **kwargs) == path
    assert (path / TEACHER_REPORT).stat().st_mtime == mtime


def test_hard_negatives_join_with_label_0_and_are_never_also_random(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    from md2pr_st.index import encode
    from md2pr_st.teacher import mine_teacher_negatives

    data = toy_data()
    mined = mine_teacher_negatives(data, tiny_model_path, num_negatives=2, range_max=3)
    # brute force: the student's cosine ranking of the corpus without the query's judged passages
    student = SentenceTransformer(str(tiny_model_path), device="cpu")
    queries = encode(student, list(data.queries["text"]), "query")
    passages = encode(student, list(CORPUS["text"]), "document")
    for row, query_id in enumerate(data.queries["id"]):
        order = sorted(range(len(CORPUS)), key=lambda i: -float(queries[row] @ passages[i]))
        unjudged = [CORPUS["id"][i] for i in order if CORPUS["id"][i] not in data.qrels[query_id]]
        assert mined[query_id] == unjudged[:2]
    pairs = teacher_training_pairs(data, random_negatives=1, seed=0, hard_negatives={**mined, "q2": ["d3", "d5"]})
    rows = list(zip(pairs["query"], pairs["passage"], pairs["label"]))
    q2 = [(p, y) for q, p, y in rows if q == "what is java"]
    # judged d3 (2/3) and d4 (1/3) keep their grades; mined d3 is judged, so only d5 joins, with label 0; the random
    # negative is neither judged nor mined
    assert q2[:3] == [("java is an island", pytest.approx(2 / 3)), ("coffee from java", pytest.approx(1 / 3)),
                      ("cats and dogs", 0.0)]  # fmt: skip
    assert len(q2) == 4 and q2[3][1] == 0.0 and q2[3][0] not in {p for p, _ in q2[:3]}
    with pytest.raises(ValueError, match="not in the corpus: \\['nope'\\]"):
        teacher_training_pairs(data, hard_negatives={"q1": ["nope"]})
    with pytest.raises(ValueError, match="num_negatives <= range_max"):
        mine_teacher_negatives(data, tiny_model_path, num_negatives=4, range_max=3)


def test_train_teacher_with_mined_negatives_records_them(tiny_cross_encoder_path, tiny_model_path, tmp_path):
    kwargs = dict(base_model=tiny_cross_encoder_path, max_length=32, batch_size=4, random_negatives=1,
                  show_progress_bar=False, student=tiny_model_path)  # fmt: skip
    path = train_teacher(toy_data(), tmp_path / "t", mined_negatives=2, **kwargs)
    report = json.loads((path / TEACHER_REPORT).read_text())
    assert (report["mined_negatives"], report["train_pairs"]) == (2, 4 + 2 * 2 + 2 * 1)
    assert report["record"]["mined_negatives"] == 2
    with pytest.raises(ValueError, match="mined_negatives needs the train split"):
        train_teacher(teacher_training_pairs(toy_data()), tmp_path / "u", mined_negatives=2, **kwargs)


class KeepModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def test_after_bf16_training_the_dev_gap_is_measured_in_full_precision(tiny_cross_encoder_path, tiny_model_path,
                                                                        tmp_path):  # fmt: skip
    kept = KeepModel()
    kwargs = dict(base_model=tiny_cross_encoder_path, max_length=32, batch_size=4, show_progress_bar=False)
    path = train_teacher(toy_data(), tmp_path / "t", dev=toy_data(), student=tiny_model_path, callbacks=[kept],
                         training_args={"bf16": True, "use_cpu": True}, **kwargs)  # fmt: skip
    # the trainer wrapped the model's forward in autocast; the run takes the wrapper off before measuring
    assert "_original_forward" not in vars(kept.model) and not hasattr(kept.model.forward, "__wrapped__")
    report = json.loads((path / TEACHER_REPORT).read_text())
    again = reranking_gap(path, tiny_model_path, toy_data())
    assert report["dev"]["teacher"] == again["teacher"]
