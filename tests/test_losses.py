"""The MD2PR losses against hand-computed cases and independent references."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util import cos_sim, dot_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from md2pr_st.losses import MD2PRLoss, SentenceLevelDistillationLoss, WordLevelDistillationLoss
from md2pr_st.losses.md2pr import false_negative_mask, masked_contrastive_loss
from md2pr_st.losses.sentence_level_distillation import sentence_level_kl
from md2pr_st.losses.word_level_distillation import (
    WordLevelTargets,
    word_level_kl,
    word_level_loss,
    word_level_loss_from_outputs,
)
from md2pr_st.teacher import Teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


QUERIES = ["what is python", "capital of france", "tea or coffee"]
POSITIVES = ["python is a snake", "paris is the capital city of france", "tea and coffee in paris"]
NEGATIVES = ["java island in the sea", "the river of the city", "the cat and the dog"]


@pytest.fixture(scope="module")
def teacher(tiny_cross_encoder_path):
    return Teacher(str(tiny_cross_encoder_path))


def features(model, texts):
    return model.preprocess(texts)


def batch_features(model, *columns):
    return [features(model, list(column)) for column in columns]


# -- sentence level ---------------------------------------------------------------------------------------------


def test_sentence_level_kl_by_hand():
    student = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.3, 0.0]])
    teacher = torch.tensor([[4.0, 2.0, 0.0], [1.0, 3.0, 2.0]])
    t_s, t_t = 0.5, 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(t / t_t) for t in t_row]
        p = [x / sum(p) for x in p]
        r = [math.exp(s / t_s) for s in s_row]
        r = [x / sum(r) for x in r]
        expected += sum(pi * math.log(pi / ri) for pi, ri in zip(p, r))
    expected = expected / 2  # no T_s^2 factor (it would switch L_s off at retrieval temperatures)
    assert sentence_level_kl(student, teacher, t_s, t_t).item() == pytest.approx(expected, rel=1e-5)


def test_sentence_level_loss_offline_labels_by_hand(tiny_model):
    loss_fn = SentenceLevelDistillationLoss(tiny_model, student_temperature=0.1, teacher_temperature=2.0)
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    neg = torch.tensor([[-1.0, 0.0], [3.0, 4.0]])
    labels = torch.tensor([[5.0, 1.0], [2.0, 2.0]])
    loss = loss_fn.compute_loss_from_embeddings([q, pos, neg], labels)
    cosines = torch.tensor([[1 / math.sqrt(2), -1.0], [1.0, 0.8]])
    expected = sum(
        F.kl_div(F.log_softmax(cosines[b] / 0.1, -1), F.softmax(labels[b] / 2.0, -1), reduction="sum").item()
        for b in range(2)
    )
    assert loss.item() == pytest.approx(expected / 2, rel=1e-5)


def test_sentence_level_online_teacher_equals_offline_labels(tiny_model, teacher):
    sentence_features = batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES)
    labels = torch.tensor([teacher.score([(q, p), (q, n)]).tolist() for q, p, n in zip(QUERIES, POSITIVES, NEGATIVES)])
    offline = SentenceLevelDistillationLoss(tiny_model)(sentence_features, labels)
    online = SentenceLevelDistillationLoss(tiny_model, teacher=teacher)(
        batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None
    )
    assert online.item() == pytest.approx(offline.item(), rel=1e-5)


def test_sentence_level_input_checks(tiny_model, caplog):
    loss_fn = SentenceLevelDistillationLoss(tiny_model)
    two_columns = batch_features(tiny_model, QUERIES, POSITIVES)
    with pytest.raises(ValueError, match="at least 3 input columns"):
        loss_fn(two_columns, torch.zeros(3, 1))
    cols = batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES)
    with pytest.raises(ValueError, match=r"\(3, 2\).*shape \(3,\)"):
        loss_fn(cols, torch.zeros(3))
    with pytest.raises(ValueError, match="NaN/inf"):
        loss_fn(cols, torch.tensor([[1.0, float("nan")], [1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN/inf"):
        SentenceLevelDistillationLoss(tiny_model)(cols, torch.tensor([[1.0, float("inf")], [1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="no label column and no teacher"):
        SentenceLevelDistillationLoss(tiny_model)(cols, None)
    with caplog.at_level(logging.WARNING):
        cold = SentenceLevelDistillationLoss(tiny_model, teacher_temperature=0.01)
        cold(cols, torch.tensor([[10.0, -5.0], [1.0, 0.0], [0.0, 0.0]]))
    assert "underflows" in caplog.text and "teacher_temperature" in caplog.text
    with pytest.raises(ValueError, match="student_temperature must be a positive"):
        SentenceLevelDistillationLoss(tiny_model, student_temperature=0)


# -- contrastive part and false negatives ----------------------------------------------------------------------


def test_false_negative_rule_by_hand():
    scores = torch.tensor([[5.0, 4.0, 3.9, 6.0], [0.0, -1.0, -0.5, -3.0]])
    mask = false_negative_mask(scores, margin=1.0)
    assert mask.tolist() == [[False, True, False, True], [False, True, True, False]]
    assert not false_negative_mask(scores, margin=None).any()
    assert false_negative_mask(scores, margin=0.0).tolist() == [[False, False, False, True], [False] * 4]


def test_masking_removes_exactly_the_flagged_candidates():
    torch.manual_seed(0)
    q, pos, n1, n2 = (torch.randn(3, 4) for _ in range(4))
    flagged = torch.tensor([[False, True, False], [False, False, False], [False, True, True]])
    loss = masked_contrastive_loss(q, [pos, n1, n2], flagged, 2.0, dot_score)
    expected = 0.0
    for i in range(3):
        candidates = [pos[j] for j in range(3)] + [n1[j] for j in range(3)] + [n2[j] for j in range(3)]
        keep = [k for k in range(9) if not (k == 3 + i and flagged[i, 1]) and not (k == 6 + i and flagged[i, 2])]
        logits = torch.stack([2.0 * q[i] @ candidates[k] for k in keep])
        expected += -(2.0 * q[i] @ pos[i] - torch.logsumexp(logits, 0)).item()
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    # other queries' hard negatives stay in as in-batch negatives: dropping query 0's flag changes only row 0
    unmasked = masked_contrastive_loss(q, [pos, n1, n2], torch.zeros(3, 3, dtype=torch.bool), 2.0, dot_score)
    assert unmasked.item() > loss.item()


def test_md2pr_without_distillation_equals_mnrl(tiny_model):
    cols = batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES)
    ours = MD2PRLoss(tiny_model, alpha=0.0, beta=0.0, false_negative_margin=None)(cols, None)
    assert set(ours) == {"contrastive"}
    reference = MultipleNegativesRankingLoss(tiny_model)(
        batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None
    )
    assert ours["contrastive"].item() == pytest.approx(reference.item(), rel=1e-5)


def test_md2pr_parts_weights_and_masked_fraction(tiny_model):
    labels = torch.tensor([[5.0, 4.8], [3.0, -2.0], [1.0, 1.5]])  # rows 0 and 2 flagged with margin 0.5
    loss_fn = MD2PRLoss(tiny_model, alpha=2.0, beta=0.0, false_negative_margin=0.5, student_temperature=0.1)
    parts = loss_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), labels)
    assert set(parts) == {"contrastive", "sentence_level"}
    assert loss_fn.last_masked_fraction == pytest.approx(2 / 3)
    assert loss_fn.masked_counts == {"flagged": 2, "hard_negatives": 3}
    with torch.no_grad():
        emb = [tiny_model(f)["sentence_embedding"] for f in batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES)]
    flagged = torch.tensor([[False, True], [False, False], [False, True]])
    expected_c = masked_contrastive_loss(emb[0], emb[1:], flagged, 20.0, cos_sim)
    student = torch.stack([F.cosine_similarity(emb[0], e) for e in emb[1:]], dim=1)
    expected_s = 2.0 * sentence_level_kl(student, labels, 0.1, 1.0)
    assert parts["contrastive"].item() == pytest.approx(expected_c.item(), rel=1e-4)
    assert parts["sentence_level"].item() == pytest.approx(expected_s.item(), rel=1e-4)


def test_md2pr_input_checks(tiny_model, teacher):
    with pytest.raises(ValueError, match="needs an online teacher"):
        MD2PRLoss(tiny_model, beta=1.0)
    loss_fn = MD2PRLoss(tiny_model)  # the word level is off by default: no teacher needed
    with pytest.raises(ValueError, match="at least 2 input columns"):
        loss_fn(batch_features(tiny_model, QUERIES), None)
    with pytest.raises(ValueError, match="needs hard negatives"):
        loss_fn(batch_features(tiny_model, QUERIES, POSITIVES), None)
    with pytest.raises(ValueError, match="no label column and no teacher"):
        loss_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        loss_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN/inf"):
        MD2PRLoss(tiny_model, beta=0.0)(
            batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES),
            torch.tensor([[0.0, 1.0]] * 2 + [[float("nan"), 0]]),
        )
    with pytest.raises(ValueError, match="alpha must be a non-negative"):
        MD2PRLoss(tiny_model, teacher=teacher, alpha=-1)


# -- word level ------------------------------------------------------------------------------------------------


def test_word_level_kl_pooled_by_hand():
    # one pair: 2 query tokens forming 1 word (rows averaged), 3 passage tokens forming 2 words (columns summed)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    d = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    target = torch.tensor([[[0.25, 0.75]]])
    tau = 0.5
    kl = word_level_kl(
        q,
        d,
        query_unit=torch.tensor([[0, 0]]),
        query_weight=torch.tensor([[0.5, 0.5]]),
        passage_unit=torch.tensor([[0, 1, 1]]),
        target=target,
        row_mask=torch.ones(1, 1, dtype=torch.bool),
        temperature=tau,
    )
    c = 1 / math.sqrt(2)
    rows = [[1.0, 0.0, c], [0.0, 1.0, c]]
    probs = []
    for row in rows:
        e = [math.exp(x / tau) for x in row]
        probs.append([x / sum(e) for x in e])
    word0 = (probs[0][0] + probs[1][0]) / 2
    word1 = (probs[0][1] + probs[0][2] + probs[1][1] + probs[1][2]) / 2
    expected = 0.25 * math.log(0.25 / word0) + 0.75 * math.log(0.75 / word1)
    assert kl.item() == pytest.approx(expected, rel=1e-5)


def test_word_level_kl_masks_columns_and_rows():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 4)
    d = torch.randn(1, 3, 4)
    target = torch.tensor([[[0.9, 0.1], [0.0, 0.0]]])
    # passage token 2 is in no unit (index V=2): out of the softmax; query unit 1 is not a valid row
    kl = word_level_kl(
        q,
        d,
        query_unit=torch.tensor([[0, 1]]),
        query_weight=torch.ones(1, 2),
        passage_unit=torch.tensor([[0, 1, 2]]),
        target=target,
        row_mask=torch.tensor([[True, False]]),
        temperature=0.2,
    )
    m = F.normalize(q[0, 0], dim=-1) @ F.normalize(d[0, :2], dim=-1).T / 0.2
    p = torch.softmax(m, -1)
    expected = (target[0, 0] * torch.log(target[0, 0] / p)).sum()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


def test_word_level_chunks_give_the_same_value_and_gradients():
    torch.manual_seed(0)
    n, lq, ld, units_q, units_d = 5, 4, 6, 3, 4
    q = torch.randn(2, lq, 8, requires_grad=True)
    d = torch.randn(n, ld, 8, requires_grad=True)
    query_unit = torch.randint(0, units_q + 1, (n, lq))
    targets = WordLevelTargets(
        query_index=torch.tensor([0, 1, 0, 1, 0]),
        passage_index=torch.arange(n),
        query_unit=query_unit,
        query_weight=(query_unit < units_q).float() * 0.5,
        passage_unit=torch.randint(0, units_d + 1, (n, ld)),
        target=torch.softmax(torch.randn(n, units_q, units_d), -1),
        row_mask=torch.ones(n, units_q, dtype=torch.bool),
        num_pairs=n,
    )
    whole = word_level_loss(q, d, targets, 0.1, chunk_size=100)
    grads_whole = torch.autograd.grad(whole, (q, d))
    chunked = word_level_loss(q, d, targets, 0.1, chunk_size=2)
    grads_chunked = torch.autograd.grad(chunked, (q, d))
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    for a, b in zip(grads_whole, grads_chunked):
        torch.testing.assert_close(a, b)


def reference_word_level(student, raw_teacher, queries, passages, tau, t_a=1.0):
    """Independent L_w for a student and teacher sharing one vocabulary: each text embedded alone, attention from
    the raw transformers model with output_attentions=True, token by token, rows sharpened as softmax(log A / T_a)."""
    model, tokenizer = raw_teacher
    total = 0.0
    for q, d in zip(queries, passages):
        with torch.no_grad():
            hq = student(student.preprocess([q]))["token_embeddings"][0, 1:-1]
            hd = student(student.preprocess([d]))["token_embeddings"][0, 1:-1]
            enc = tokenizer(q, d, return_tensors="pt")
            att = model(**enc, output_attentions=True).attentions[-1][0].mean(0)
        seq = enc.sequence_ids(0)
        rows = [k for k, s in enumerate(seq) if s == 0]
        cols = [k for k, s in enumerate(seq) if s == 1]
        a = att[rows][:, cols]
        a = torch.softmax(torch.log(a / a.sum(1, keepdim=True)) / t_a, dim=1)
        m = F.normalize(hq, dim=-1) @ F.normalize(hd, dim=-1).T / tau
        total += F.kl_div(F.log_softmax(m, -1), a, reduction="none").sum(-1).mean().item()
    return total / len(queries)


@pytest.mark.parametrize("t_a", [1.0, 0.4])
def test_word_level_loss_matches_output_attentions_reference(tiny_model, teacher, tiny_cross_encoder_path, t_a):
    raw = (
        AutoModelForSequenceClassification.from_pretrained(
            str(tiny_cross_encoder_path), attn_implementation="eager"
        ).eval(),
        AutoTokenizer.from_pretrained(str(tiny_cross_encoder_path)),
    )
    loss_fn = WordLevelDistillationLoss(tiny_model, teacher, temperature=0.2, chunk_size=2, attention_temperature=t_a)
    tiny_model.eval()  # no dropout, so the reference sees the same embeddings
    value = loss_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None)
    expected = reference_word_level(tiny_model, raw, QUERIES * 2, POSITIVES + NEGATIVES, 0.2, t_a)
    assert loss_fn.last_aligned_fraction == 1.0
    assert value.item() == pytest.approx(expected, rel=1e-4)
    tiny_model.train()


def test_word_pooling_path_equals_token_path_when_words_are_single_tokens(tiny_model, teacher):
    # every word below is one vocabulary token, so word pooling is the identity and both paths must agree
    queries, passages = ["what is python", "the cat"], ["python is a snake", "the dog and the cat"]
    cols = batch_features(tiny_model, queries, passages)
    tiny_model.eval()
    from md2pr_st.losses._shared import decode_columns, embed_with_tokens

    with torch.no_grad():
        texts = decode_columns(tiny_model, cols)
        blocks = teacher.attention([(q.text, d.text) for q, d in zip(texts[0], texts[1])])
        outputs = embed_with_tokens(tiny_model, cols)
        token_path, t1 = word_level_loss_from_outputs(outputs, texts, blocks, (True, True), 0.2, 8)
        word_path, t2 = word_level_loss_from_outputs(outputs, texts, blocks, (False, False), 0.2, 8)
    tiny_model.train()
    assert t1.aligned_fraction == t2.aligned_fraction == 1.0
    assert word_path.item() == pytest.approx(token_path.item(), rel=1e-5)


def test_word_level_with_a_differently_split_student_vocabulary(tmp_path, teacher):
    from sentence_transformers.sentence_transformer.model import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from tiny_models import build_tiny_char_bert

    backbone = build_tiny_char_bert(tmp_path / "char", seed=3)
    transformer = Transformer(str(backbone), max_seq_length=20)  # the character student truncates early
    student = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean")], device="cpu")
    loss_fn = WordLevelDistillationLoss(student, teacher, temperature=0.2)
    assert loss_fn._same_vocabulary(student, batch_features(student, QUERIES, POSITIVES)) == (False, False)
    value = loss_fn(batch_features(student, QUERIES, POSITIVES), None)
    assert torch.isfinite(value) and value.item() > 0
    assert loss_fn.last_aligned_fraction == 1.0
    value.backward()
    assert transformer.auto_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_gradients_reach_the_student_and_never_the_teacher(tiny_model, teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    tiny_model.zero_grad()
    loss_fn = MD2PRLoss(tiny_model, teacher=teacher, alpha=1.0, beta=1.0)
    parts = loss_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None)
    assert set(parts) == {"contrastive", "sentence_level", "word_level"}
    torch.stack(list(parts.values())).sum().backward()
    student_grads = [p.grad for p in tiny_model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # the word-level part alone also reaches the student (its token embeddings, not only the pooled vector)
    tiny_model.zero_grad()
    parts = loss_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None)
    parts["word_level"].backward()
    grad = tiny_model[0].auto_model.encoder.layer[-1].output.dense.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    tiny_model.zero_grad()


def test_config_and_citation(tiny_model, teacher):
    for loss_fn in (
        MD2PRLoss(tiny_model, teacher=teacher, beta=1.0),
        SentenceLevelDistillationLoss(tiny_model, teacher=teacher),
        WordLevelDistillationLoss(tiny_model, teacher),
    ):
        config = loss_fn.get_config_dict()
        assert config["teacher"] == teacher.model_name
        assert "2312.16821" in loss_fn.citation and loss_fn.citation.strip().startswith("@misc{")
    config = MD2PRLoss(tiny_model, teacher=teacher, beta=1.0, false_negative_margin=0.3).get_config_dict()
    assert config["false_negative_margin"] == 0.3 and config["teacher_layers"] == [1]


def test_gathered_candidates_use_the_rank_offset():
    # rank 1 of 2 (2 queries each): the gathered columns hold rank 0's rows first, then rank 1's
    torch.manual_seed(1)
    pos, neg = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.randn(2, 3)
    flagged = torch.tensor([[False, True], [False, False]])
    loss = masked_contrastive_loss(q, [pos, neg], flagged, 1.0, dot_score, offset=2)
    candidates = torch.cat([pos, neg])
    expected = 0.0
    for i in range(2):
        logits = q[i] @ candidates.T
        if i == 0:
            logits[4 + 2 + i] = float("-inf")  # its own hard negative, at the gathered row offset + i
        expected += -(logits[2 + i] - torch.logsumexp(logits, 0)).item()
    assert loss.item() == pytest.approx(expected / 2, rel=1e-5)


def test_gather_across_devices_single_process_equals_local(tiny_model):
    labels = torch.tensor([[5.0, 4.8], [3.0, -2.0], [1.0, 1.5]])
    local = MD2PRLoss(tiny_model, beta=0.0, false_negative_margin=0.5)
    gathered = MD2PRLoss(tiny_model, beta=0.0, false_negative_margin=0.5, gather_across_devices=True)
    tiny_model.eval()
    a = local(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), labels)
    b = gathered(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), labels)
    tiny_model.train()
    assert a["contrastive"].item() == pytest.approx(b["contrastive"].item(), rel=1e-6)
    assert gathered.get_config_dict()["gather_across_devices"] is True


def test_md2pr_online_scores_equal_offline_labels(tiny_model, teacher):
    labels = torch.tensor([teacher.score([(q, p), (q, n)]).tolist() for q, p, n in zip(QUERIES, POSITIVES, NEGATIVES)])
    gaps = (labels[:, 0] - labels[:, 1]).sort().values
    margin = float(gaps[0] + gaps[1]) / 2  # flags exactly the row with the smallest gap, far from the boundary
    tiny_model.eval()
    offline_fn = MD2PRLoss(tiny_model, teacher=teacher, beta=1.0, false_negative_margin=margin)
    online_fn = MD2PRLoss(tiny_model, teacher=teacher, beta=1.0, false_negative_margin=margin)
    offline = offline_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), labels)
    online = online_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None)
    tiny_model.train()
    for key in ("contrastive", "sentence_level", "word_level"):
        assert online[key].item() == pytest.approx(offline[key].item(), rel=1e-5)
    assert online_fn.masked_counts == offline_fn.masked_counts and offline_fn.masked_counts["flagged"] == 1


@pytest.mark.slow
def test_minilm_student_and_teacher_backbone(minilm_path):
    """The real all-MiniLM-L6-v2 as student and as teacher backbone (random head): the teacher's attention matches
    output_attentions=True, the shared vocabulary aligns every pair token by token, and one step trains."""
    from sentence_transformers.cross_encoder.model import CrossEncoder
    from sentence_transformers.sentence_transformer.model import SentenceTransformer

    student = SentenceTransformer(str(minilm_path), device="cpu")
    teacher = Teacher(CrossEncoder(str(minilm_path), num_labels=1, device="cpu"), max_length=64)
    pairs = [(q, p) for q, p in zip(QUERIES, POSITIVES)]
    blocks = teacher.attention(pairs)
    raw = teacher.cross_encoder.model
    enc = teacher.tokenizer(pairs[0][0], pairs[0][1], return_tensors="pt")
    with torch.no_grad():
        attention = raw(**enc, output_attentions=True).attentions[-1][0].mean(0)
    seq = enc.sequence_ids(0)
    rows = [k for k, s in enumerate(seq) if s == 0]
    cols = [k for k, s in enumerate(seq) if s == 1]
    reference = attention[rows][:, cols]
    torch.testing.assert_close(blocks[0].weights, reference / reference.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)

    loss_fn = MD2PRLoss(student, teacher=teacher, beta=1.0)
    parts = loss_fn(batch_features(student, QUERIES, POSITIVES, NEGATIVES), None)
    assert loss_fn.last_aligned_fraction == 1.0
    total = torch.stack(list(parts.values())).sum()
    assert torch.isfinite(total)
    total.backward()
    assert student[0].auto_model.encoder.layer[-1].output.dense.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("beta", [1.0, 0.0])
def test_cached_md2pr_gives_the_same_loss_and_gradients(tiny_model, teacher, beta):
    from md2pr_st.losses import CachedMD2PRLoss

    def run(loss_fn):
        tiny_model.zero_grad()
        parts = loss_fn(batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None)
        torch.stack(list(parts.values())).sum().backward()
        grads = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]
        return {k: v.item() for k, v in parts.items()}, grads

    tiny_model.eval()  # same dropout draws are not possible across one merged and several mini-batch forwards
    kwargs = {"teacher": teacher, "beta": beta, "false_negative_margin": 0.001}
    plain, plain_grads = run(MD2PRLoss(tiny_model, **kwargs))
    cached_fn = CachedMD2PRLoss(tiny_model, mini_batch_size=2, **kwargs)
    cached, cached_grads = run(cached_fn)
    tiny_model.train()
    tiny_model.zero_grad()
    assert cached.keys() == plain.keys()
    for key in plain:
        assert cached[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7)
    assert len(cached_grads) == len(plain_grads) > 0
    for a, b in zip(plain_grads, cached_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert cached_fn.uses_gradient_cache and cached_fn.get_config_dict()["mini_batch_size"] == 2
    assert all(p.grad is None for p in teacher.parameters())


def test_word_level_on_positives_only_is_the_word_loss_of_the_positive_pairs(tiny_model, teacher, monkeypatch):
    tiny_model.eval()
    columns = (QUERIES, POSITIVES, NEGATIVES)
    both = MD2PRLoss(tiny_model, teacher=teacher, beta=1.0, word_level_pairs="positives")
    attended = []
    original = teacher.attention
    monkeypatch.setattr(teacher, "attention", lambda pairs, **kw: attended.extend(pairs) or original(pairs, **kw))
    parts = both(batch_features(tiny_model, *columns), None)
    monkeypatch.undo()
    assert attended == list(zip(QUERIES, POSITIVES))  # the teacher attends over the positive pairs only
    positives_only = WordLevelDistillationLoss(tiny_model, teacher)(
        batch_features(tiny_model, QUERIES, POSITIVES), None
    )
    every_pair = MD2PRLoss(tiny_model, teacher=teacher, beta=1.0)(batch_features(tiny_model, *columns), None)
    tiny_model.train()
    assert parts["word_level"].item() == pytest.approx(positives_only.item(), rel=1e-5)
    assert parts["word_level"].item() != pytest.approx(every_pair["word_level"].item(), rel=1e-3)
    # the sentence level and the masking still see every candidate, scored online
    assert parts["sentence_level"].item() == pytest.approx(every_pair["sentence_level"].item(), rel=1e-5)
    assert both.get_config_dict()["word_level_pairs"] == "positives"
    with pytest.raises(ValueError, match="word_level_pairs must be one of all, positives"):
        MD2PRLoss(tiny_model, teacher=teacher, beta=1.0, word_level_pairs="negatives")


def test_a_beta_warm_up_starts_the_word_level_at_0(tiny_model_path, tiny_cross_encoder_path, tmp_path):
    from datasets import Dataset

    from md2pr_st.config import LossArguments
    from md2pr_st.student import train_student

    rows = Dataset.from_dict({"query": QUERIES * 2, "positive": POSITIVES * 2, "negative_1": NEGATIVES * 2})
    rows = rows.map(lambda row, i: {"query": f"{row['query']} {i}"}, with_indices=True)  # no duplicate texts
    teacher = Teacher(str(tiny_cross_encoder_path))
    logs = {}
    for schedule in ("constant", "warmup"):
        loss_args = LossArguments(beta=0.5, beta_schedule=schedule)
        _, log = train_student(tiny_model_path, rows, tmp_path / schedule, loss_args, teacher=teacher, epochs=4,
                               batch_size=3, device="cpu", training_args={"logging_steps": 1})  # fmt: skip
        logs[schedule] = [entry["word_level"] for entry in log if "word_level" in entry]
    # 8 steps; the warm-up's first step runs at beta 0 (no word level computed or logged), its second at 0.125
    assert len(logs["constant"]) == 8 and len(logs["warmup"]) == 7
    assert 0 < logs["warmup"][0] < logs["constant"][1] / 2
    assert logs["warmup"][-1] == pytest.approx(logs["constant"][-1], rel=0.5)  # both at beta 0.5 by then
    with pytest.raises(ValueError, match="beta_schedule must be one of constant, warmup, decay"):
        LossArguments(beta_schedule="cosine")
