"""The losses inside a real SentenceTransformerTrainer: 3 steps on tiny random models, save, plain reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from md2pr_st.losses import CachedMD2PRLoss, MD2PRLoss, SentenceLevelDistillationLoss, WordLevelDistillationLoss
from md2pr_st.teacher import Teacher
from tiny_models import build_tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ROWS = {
    "query": ["what is python", "capital of france", "tea or coffee", "why a cat", "where is paris", "who can cope"],
    "positive": [
        "python is a snake",
        "paris is the capital city of france",
        "tea and coffee",
        "the cat is not a dog",
        "paris is in france on the river",
        "trauma and how to cope",
    ],
    "negative_1": ["java island", "the city of the river", "the sea", "a dog", "the ocean", "a model of search"],
}


def dataset(with_scores: bool = False) -> Dataset:
    rows = dict(ROWS)
    if with_scores:
        rows["scores"] = [[3.0, 1.0], [2.0, 2.5], [1.0, 0.0], [0.5, -1.0], [4.0, 0.0], [1.0, 0.9]]
    return Dataset.from_dict(rows)


def train(model, loss, data, tmp_path, **args):
    args = SentenceTransformerTrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=3,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        **args,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    trainer.train()
    return trainer


@pytest.fixture()
def student(tiny_model_path):
    return SentenceTransformer(str(tiny_model_path), device="cpu")


@pytest.fixture()
def teacher(tiny_cross_encoder_path):
    return Teacher(str(tiny_cross_encoder_path))


def changed(model, reference_path):
    reference = SentenceTransformer(str(reference_path), device="cpu").state_dict()
    return any(not torch.equal(v, reference[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["md2pr_online", "md2pr_offline", "cached_md2pr", "sentence_level", "word_level"])
def test_three_trainer_steps_per_loss(kind, student, teacher, tiny_model_path, tmp_path):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    if kind == "md2pr_online":
        loss, data = MD2PRLoss(student, teacher=teacher, beta=1.0, false_negative_margin=0.5), dataset()
    elif kind == "md2pr_offline":
        loss, data = (
            MD2PRLoss(student, teacher=teacher, beta=1.0, false_negative_margin=0.2),
            dataset(with_scores=True),
        )
    elif kind == "cached_md2pr":
        loss, data = CachedMD2PRLoss(student, teacher=teacher, beta=1.0, mini_batch_size=2), dataset()
    elif kind == "sentence_level":
        loss, data = SentenceLevelDistillationLoss(student, teacher=teacher), dataset()
    else:
        loss, data = WordLevelDistillationLoss(student, teacher), dataset()
    trainer = train(student, loss, data, tmp_path)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(np.isfinite(entry["loss"]) for entry in logs)
    if "md2pr" in kind:
        for entry in logs:  # each part is logged, and they add up to the loss
            assert {"contrastive", "sentence_level", "word_level"} <= set(entry)
            parts = entry["contrastive"] + entry["sentence_level"] + entry["word_level"]
            assert parts == pytest.approx(entry["loss"], rel=1e-2, abs=1e-3)
    if kind == "md2pr_offline":
        # batches of 3 from the scores above with margin 0.2: rows 2 (2.5 >= 1.8) and 6 (0.9 >= 0.8) are flagged
        assert loss.masked_counts["hard_negatives"] == 9
        assert loss.masked_counts["flagged"] in (2, 3, 4)
    assert changed(student, tiny_model_path)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and not teacher.cross_encoder.model.training


def test_trained_model_is_a_plain_sentence_transformers_folder(student, teacher, tmp_path):
    loss = MD2PRLoss(student, teacher=teacher, beta=1.0)
    train(student, loss, dataset(), tmp_path, batch_sampler=BatchSamplers.NO_DUPLICATES)
    out = tmp_path / "saved"
    student.save(str(out))
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "MD2PRLoss" in card and "2312.16821" in card
    texts = ["what is python", "paris is the capital city of france"]
    expected = student.encode(texts, convert_to_numpy=True)
    script = textwrap.dedent(
        f"""
        import json, sys
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer({str(out)!r}, device="cpu")
        assert not any(name.startswith("md2pr_st") for name in sys.modules), "md2pr_st was imported"
        print(json.dumps(model.encode({texts!r}).tolist()))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, env=env
    )
    reloaded = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(reloaded, expected, rtol=1e-5, atol=1e-6)


def test_training_with_prompts(student, teacher, tmp_path):
    loss = MD2PRLoss(student, teacher=teacher, beta=1.0)
    seen = []
    original = teacher.score_and_attend

    def record(pairs, batch_size=None):
        seen.extend(pairs)
        return original(pairs, batch_size)

    teacher.score_and_attend = record
    train(
        student,
        loss,
        dataset(),
        tmp_path,
        prompts={"query": "query: ", "positive": "passage: ", "negative_1": "passage: "},
    )
    # the teacher reads the texts without the student's prompts
    assert seen and all(not q.startswith("query") and not d.startswith("passage") for q, d in seen)
    assert {q for q, _ in seen} <= set(ROWS["query"])
    assert loss.last_aligned_fraction == 1.0


def test_a_cased_teacher_reads_the_original_texts_of_an_uncased_student(student, tmp_path):
    """The student lower-cases and truncates; the teacher must read what the user wrote, and still align."""
    cased = Teacher(str(build_tiny_bert(tmp_path / "cased", num_labels=1, seed=4, cased=True)))
    rows = Dataset.from_dict(
        {
            "query": ["What is Python?", "Where is Paris, France?", "Why a Cat?"],
            "positive": [
                "Python is a snake; Java is an Island in the Sea, far away from the City of Paris.",
                "Paris is the Capital City of France, on the River.",
                "The Cat is not a Dog.",
            ],
            "negative_1": ["Tea or Coffee?", "The Ocean.", "A Model of Search."],
        }
    )
    seen = []
    original = cased.score_and_attend

    def record(pairs, batch_size=None):
        seen.extend(pairs)
        return original(pairs, batch_size)

    cased.score_and_attend = record
    student.max_seq_length = 8  # the student cuts the long passage; the teacher must not
    loss = MD2PRLoss(student, teacher=cased, beta=1.0, alpha=0.0, false_negative_margin=None)
    train(student, loss, rows, tmp_path)
    written = {(q, d) for row in rows for q, d in ((row["query"], row["positive"]), (row["query"], row["negative_1"]))}
    assert seen and set(seen) <= written  # case, punctuation and the whole passage, as written
    assert any(d.startswith("Python is a snake; Java") and d.endswith("City of Paris.") for _, d in seen)
    assert loss.last_aligned_fraction > 0  # aligned through words of the original text, across vocabularies


def test_training_with_a_router_of_separate_towers(teacher, tmp_path):
    from sentence_transformers.base.modules.router import Router
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    towers = []
    for seed in (5, 6):
        backbone = build_tiny_bert(tmp_path / f"tower{seed}", seed=seed)
        transformer = Transformer(str(backbone), max_seq_length=32)
        towers.append([transformer, Pooling(32, pooling_mode="mean")])
    router = Router.for_query_document(query_modules=towers[0], document_modules=towers[1])
    model = SentenceTransformer(modules=[router, Normalize()], device="cpu")
    query_before = towers[0][0].auto_model.embeddings.word_embeddings.weight.clone()
    doc_before = towers[1][0].auto_model.embeddings.word_embeddings.weight.clone()
    loss = MD2PRLoss(model, teacher=teacher, beta=1.0)
    train(
        model,
        loss,
        dataset(),
        tmp_path,
        router_mapping={"query": "query", "positive": "document", "negative_1": "document"},
    )
    assert not torch.equal(towers[0][0].auto_model.embeddings.word_embeddings.weight, query_before)
    assert not torch.equal(towers[1][0].auto_model.embeddings.word_embeddings.weight, doc_before)
    assert loss.last_aligned_fraction == 1.0
    model.save(str(tmp_path / "router_model"))
    reloaded = SentenceTransformer(str(tmp_path / "router_model"), device="cpu")
    np.testing.assert_allclose(
        reloaded.encode_query(["what is python"]), model.encode_query(["what is python"]), rtol=1e-5, atol=1e-6
    )


def _wrap(kind, model, inner):
    from sentence_transformers.sentence_transformer import losses

    if kind == "matryoshka":
        return losses.MatryoshkaLoss(model, inner, [32, 16])
    if kind == "matryoshka_2d":
        return losses.Matryoshka2dLoss(model, inner, [32, 16])
    return losses.AdaptiveLayerLoss(model, inner)


# The host runs Matryoshka2dLoss and AdaptiveLayerLoss with non-cached inner losses only.
@pytest.mark.parametrize(
    ("wrapper", "cached"),
    [("matryoshka", False), ("matryoshka_2d", False), ("adaptive_layer", False), ("matryoshka", True)],
)
def test_host_wrappers_train_with_the_md2pr_losses(student, teacher, tiny_model_path, tmp_path, wrapper, cached):
    """The host's loss wrappers multiply and add the inner loss's output: MD2PR's dict of parts must survive that,
    with each part still logged and the parts adding up to the wrapper's loss."""
    inner_class = CachedMD2PRLoss if cached else MD2PRLoss
    extra = {"mini_batch_size": 2} if cached else {}
    beta = 0.0 if cached else 1.0  # the cached loss's word level cannot be truncated: a clear error, tested below
    inner = inner_class(student, teacher=teacher, alpha=1.0, beta=beta, **extra)
    trainer = train(student, _wrap(wrapper, student, inner), dataset(with_scores=True), tmp_path)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "contrastive" in entry]
    assert len(logged) == 3 and changed(student, tiny_model_path)
    for entry in logged:
        parts = sum(v for k, v in entry.items() if k in ("contrastive", "sentence_level", "word_level", "other"))
        assert parts == pytest.approx(entry["loss"], rel=1e-3, abs=1e-4)
        assert entry["sentence_level"] > 0 and (cached or entry["word_level"] > 0)


def test_cached_word_level_inside_matryoshka_is_a_clear_error(student, teacher, tmp_path):
    inner = CachedMD2PRLoss(student, teacher=teacher, beta=1.0, mini_batch_size=2)
    with pytest.raises(ValueError, match="Wrap MD2PRLoss instead"):
        train(student, _wrap("matryoshka", student, inner), dataset(with_scores=True), tmp_path)


def test_loss_parts_act_like_their_sum_under_a_wrapper_s_arithmetic():
    from md2pr_st.losses._shared import LossParts

    parts = LossParts(contrastive=torch.tensor(2.0), word_level=torch.tensor(1.0))
    combined = 0.0
    for weight in (1.0, 0.5):
        combined += weight * parts
    combined = combined + torch.tensor(0.1) - parts / 4
    expected = 1.5 * 3.0 + 0.1 - 0.75
    assert isinstance(combined, dict) and sum(v.item() for v in combined.values()) == pytest.approx(expected)
    assert combined["other"].item() == pytest.approx(0.1)


def test_train_student_passes_the_host_s_training_arguments(tiny_model_path, tmp_path):
    from md2pr_st.config import LossArguments
    from md2pr_st.student import train_student

    no_distillation = LossArguments(alpha=0.0, beta=0.0)
    _, log = train_student(
        tiny_model_path, dataset(), tmp_path / "s", no_distillation, batch_size=2, device="cpu",
        training_args={"max_steps": 1, "logging_steps": 1},
    )  # fmt: skip
    assert [entry["step"] for entry in log if "loss" in entry] == [1]  # 6 rows of batch 2 would be 3 steps
    with pytest.raises(ValueError, match="output_dir.*set by md2pr"):
        train_student(tiny_model_path, dataset(), tmp_path / "t", no_distillation, training_args={"output_dir": "x"})


@pytest.mark.parametrize("kind", ["list", "tuple", "column"])
def test_preprocess_keeps_the_texts_of_any_sequence(student, teacher, kind):
    """A datasets Column (``dataset["query"]``, not a list since datasets 4) is what users hand to
    ``model.preprocess`` in their own loops; the teacher must still read the texts as written."""
    from md2pr_st.losses._shared import ORIGINAL_TEXTS

    MD2PRLoss(student, teacher=teacher, beta=1.0)
    rows = Dataset.from_dict({"query": ["What is Python?", "Why a Cat?"]})
    inputs = {"list": list(rows["query"]), "tuple": tuple(rows["query"]), "column": rows["query"]}[kind]
    features = student.preprocess(inputs)
    assert features[ORIGINAL_TEXTS] == ["What is Python?", "Why a Cat?"]
    assert all(type(text) is str for text in features[ORIGINAL_TEXTS])
