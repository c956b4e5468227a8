"""Every encoder family rerankers and retrievers are built on, as the teacher and as the student (tiny random
configs): attention read correctly, one training step with both levels, recorded targets equal to the online ones,
bf16 autocast on the CPU; and a decoder student with last-token pooling."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from md2pr_st.losses import MD2PRLoss
from md2pr_st.teacher import AttentionRecorder, OfflineTeacher, Teacher, candidate_pairs
from tiny_models import (
    DECODER_FAMILIES,
    ENCODER_FAMILIES,
    build_tiny_bert,
    build_tiny_family,
    build_tiny_family_student,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERIES = ["what is python", "capital of france", "tea or coffee"]
POSITIVES = ["python is a snake of the island", "paris is the capital city of france", "tea and coffee in paris"]
NEGATIVES = ["java island in the sea", "the river of the city", "the cat and the dog"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each family's tiny cross-encoder and student, built once per module on first use."""
    built: dict = {}

    def get(family: str, role: str):
        if (family, role) not in built:
            folder = tmp_path_factory.mktemp(f"{family}-{role}")
            if role == "teacher":
                built[family, role] = build_tiny_family(folder, family, num_labels=1, seed=1)
            else:
                build_tiny_family_student(folder, family)
                built[family, role] = folder / "model"
        return built[family, role]

    return get


@pytest.fixture(scope="module")
def bert_teacher(tmp_path_factory):
    return Teacher(str(build_tiny_bert(tmp_path_factory.mktemp("bert-teacher"), num_labels=1, seed=1)))


@pytest.fixture(scope="module")
def bert_student_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert-student")
    build_tiny_family_student(folder, "bert")
    return folder / "model"


def pair_of(teacher_or_student, family, folders, bert_teacher, bert_student_path):
    """(student, teacher) with ``family`` in the given role and tiny BERT in the other."""
    if teacher_or_student == "teacher":
        return SentenceTransformer(str(bert_student_path), device="cpu"), Teacher(str(folders(family, "teacher")))
    return SentenceTransformer(str(folders(family, "student")), device="cpu"), bert_teacher


def loss_parts(student, loss, autocast: bool = False):
    """One forward and backward of ``loss`` on a 3-query batch, without dropout: the parts and the gradients."""
    student.eval()
    student.zero_grad()
    features = [student.preprocess(list(column)) for column in (QUERIES, POSITIVES, NEGATIVES)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        parts = loss(features, None)
    torch.stack([p.float() for p in parts.values()]).sum().backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    return {k: float(v.detach()) for k, v in parts.items()}, grads


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_the_teacher_s_attention_is_the_model_s_own(family, folders):
    """The block of each pair is the last layer's head-averaged attention as the model itself returns it
    (``output_attentions=True``), query rows by passage columns, each row renormalised over the passage."""
    folder = folders(family, "teacher")
    teacher = Teacher(str(folder))
    pairs = list(zip(QUERIES, POSITIVES))
    blocks = teacher.attention(pairs)
    reference = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for (query, passage), block in zip(pairs, blocks):
        encoding = tokenizer(query, passage, return_tensors="pt")
        with torch.no_grad():
            attention = reference(**encoding, output_attentions=True).attentions[-1][0].mean(dim=0)
        sequence = encoding.sequence_ids(0)
        rows = [i for i, s in enumerate(sequence) if s == 0]
        cols = [i for i, s in enumerate(sequence) if s == 1]
        want = attention[rows][:, cols]
        want = want / want.sum(dim=1, keepdim=True)
        torch.testing.assert_close(block.weights, want, rtol=1e-4, atol=1e-6)
        assert block.weights.shape == (len(rows), len(cols))
        assert (block.weights >= 0).all()
        torch.testing.assert_close(block.weights.sum(dim=1), torch.ones(len(rows)))


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_one_step_with_both_levels(family, role, folders, bert_teacher, bert_student_path):
    """Finite loss parts, finite gradients that reach the student, and a step that changes it."""
    student, teacher = pair_of(role, family, folders, bert_teacher, bert_student_path)
    loss = MD2PRLoss(student, teacher=teacher, beta=1.0)
    parts, grads = loss_parts(student, loss)
    assert set(parts) == {"contrastive", "sentence_level", "word_level"}
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values()), parts
    assert parts["word_level"] > 0
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    before = [p.detach().clone() for p in student.parameters()]
    torch.optim.SGD(student.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_recorded_targets_agree_with_the_online_teacher(family, folders, bert_student_path, tmp_path):
    teacher = Teacher(str(folders(family, "teacher")))
    pairs = candidate_pairs(QUERIES, [list(row) for row in zip(POSITIVES, NEGATIVES)])
    AttentionRecorder(teacher, tmp_path / "store", top_k=None, weights_dtype="float32").score(pairs)
    offline = OfflineTeacher(tmp_path / "store")
    for got, want in zip(offline.attention(pairs), teacher.attention(pairs)):
        assert (got.query_ids, got.passage_ids) == (want.query_ids, want.passage_ids)
        torch.testing.assert_close(got.weights, want.weights, rtol=1e-6, atol=1e-7)
    student = SentenceTransformer(str(bert_student_path), device="cpu")
    online, _ = loss_parts(student, MD2PRLoss(student, teacher=teacher, beta=1.0))
    recorded, _ = loss_parts(student, MD2PRLoss(student, teacher=offline, beta=1.0))
    assert recorded == pytest.approx(online, rel=1e-5)


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_bf16_autocast_keeps_the_loss_finite(family, role, folders, bert_teacher, bert_student_path):
    student, teacher = pair_of(role, family, folders, bert_teacher, bert_student_path)
    parts, grads = loss_parts(student, MD2PRLoss(student, teacher=teacher, beta=1.0), autocast=True)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values()), parts
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_a_decoder_student_with_last_token_pooling(family, folders, bert_teacher):
    """Both levels train a decoder student (its token states see only their left context, which the word level
    matches to the teacher's bidirectional attention as it is: documented in docs/losses.md)."""
    student = SentenceTransformer(str(folders(family, "student")), device="cpu")
    assert student[1].get_config_dict()["pooling_mode"] == "lasttoken"
    for beta in (0.0, 1.0):
        parts, grads = loss_parts(student, MD2PRLoss(student, teacher=bert_teacher, beta=beta))
        assert all(torch.isfinite(torch.tensor(v)) for v in parts.values()), parts
        assert ("word_level" in parts) == (beta > 0)
        assert grads and all(torch.isfinite(g).all() for g in grads)
