"""The cross-encoder teacher: logits, attention blocks against output_attentions=True, cache, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from md2pr_st.teacher import Teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PAIRS = [
    ("what is python?", "python is a snake of the island"),
    ("tea", "coffee and tea in paris"),
    ("capital of france", "paris is the capital city of france on the river"),
]


@pytest.fixture(scope="module")
def teacher(tiny_cross_encoder_path):
    return Teacher(str(tiny_cross_encoder_path))


@pytest.fixture(scope="module")
def raw(tiny_cross_encoder_path):
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_cross_encoder_path), attn_implementation="eager"
    )
    return model.eval(), AutoTokenizer.from_pretrained(str(tiny_cross_encoder_path))


def reference_blocks(raw, pairs, layers, heads=None, max_length=None):
    model, tokenizer = raw
    kwargs = {"truncation": "longest_first", "max_length": max_length} if max_length else {}
    enc = tokenizer([q for q, _ in pairs], [d for _, d in pairs], padding=True, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    blocks = []
    for i in range(len(pairs)):
        maps = torch.stack([out.attentions[layer][i] for layer in layers])  # (layers, heads, L, L)
        if heads is not None:
            maps = maps[:, list(heads)]
        attention = maps.mean(dim=(0, 1))
        seq = enc.sequence_ids(i)
        rows = [k for k, s in enumerate(seq) if s == 0]
        cols = [k for k, s in enumerate(seq) if s == 1]
        block = attention[rows][:, cols]
        blocks.append(block / block.sum(dim=1, keepdim=True))
    return out.logits[:, 0], blocks


def test_scores_are_the_raw_logits(teacher, raw):
    logits, _ = reference_blocks(raw, PAIRS, layers=[-1])
    scores = teacher.score(PAIRS)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, logits.numpy(), rtol=1e-5, atol=1e-6)


def test_attention_matches_output_attentions_last_layer_mean_heads(teacher, raw):
    logits, expected = reference_blocks(raw, PAIRS, layers=[-1])
    out = teacher.score_and_attend(PAIRS)
    torch.testing.assert_close(out.scores, logits, rtol=1e-5, atol=1e-6)
    for block, reference, (q, d) in zip(out.attention, expected, PAIRS):
        assert block.weights.shape == reference.shape
        torch.testing.assert_close(block.weights, reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(block.weights.sum(dim=1), torch.ones(len(block.query_ids)))
        # the offsets point at the query / passage texts, special tokens removed
        assert [q[s:e] for s, e in block.query_offsets][0] == q.split()[0]
        assert block.passage_offsets[-1][1] == len(d)


def test_attention_chosen_layers_and_heads(tiny_cross_encoder_path, raw):
    teacher = Teacher(str(tiny_cross_encoder_path), layers=(0, -1), heads=(1, 3))
    _, expected = reference_blocks(raw, PAIRS, layers=[0, 1], heads=(1, 3))
    for block, reference in zip(teacher.attention(PAIRS), expected):
        torch.testing.assert_close(block.weights, reference, rtol=1e-5, atol=1e-6)
    # a different head subset gives different blocks, so the selection is really applied
    other = Teacher(str(tiny_cross_encoder_path), layers=(0,), heads=(0,)).attention(PAIRS)
    assert not torch.allclose(other[0].weights, expected[0])


def test_attention_with_truncation(tiny_cross_encoder_path, raw):
    teacher = Teacher(str(tiny_cross_encoder_path), max_length=12)
    _, expected = reference_blocks(raw, PAIRS, layers=[-1], max_length=12)
    blocks = teacher.attention(PAIRS)
    for block, reference in zip(blocks, expected):
        assert len(block.query_ids) + len(block.passage_ids) <= 12 - 3
        torch.testing.assert_close(block.weights, reference, rtol=1e-5, atol=1e-6)


def test_score_cache_skips_repeated_pairs(tiny_cross_encoder_path):
    teacher = Teacher(str(tiny_cross_encoder_path))
    calls = []
    original = teacher._forward

    def counting(pairs, *, attention):
        calls.append(len(pairs))
        return original(pairs, attention=attention)

    teacher._forward = counting
    first = teacher.score(PAIRS[:2], batch_size=1)
    assert calls == [1, 1]
    again = teacher.score(PAIRS, batch_size=8)
    assert calls == [1, 1, 1]  # only the new pair was scored
    np.testing.assert_array_equal(again[:2], first)
    assert len(teacher.score_cache) == 3 and Teacher.pair_key(*PAIRS[0]) in teacher.score_cache


def test_batching_by_length_keeps_the_input_order(tiny_cross_encoder_path, teacher):
    unbatched = np.array([teacher._forward([p], attention=False)[0].item() for p in PAIRS], dtype=np.float32)
    fresh = Teacher(str(tiny_cross_encoder_path), cache_scores=False)
    np.testing.assert_allclose(fresh.score(PAIRS[::-1], batch_size=2), unbatched[::-1], rtol=1e-5, atol=1e-6)


def test_teacher_is_frozen_and_stays_in_eval(teacher):
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.cross_encoder.model.training
    out = teacher.score_and_attend(PAIRS[:1])
    assert not out.scores.requires_grad and not out.attention[0].weights.requires_grad


def test_bad_input_gives_clear_errors(tiny_cross_encoder_path, tiny_model_path):
    with pytest.raises(ValueError, match="num_hidden_layers=2"):
        Teacher(str(tiny_cross_encoder_path), layers=(5,))
    with pytest.raises(ValueError, match="num_attention_heads=4"):
        Teacher(str(tiny_cross_encoder_path), heads=(4,))
    with pytest.raises(TypeError, match=r"\(query, passage\) string pairs"):
        Teacher(str(tiny_cross_encoder_path)).score(["just a query"])
    with pytest.raises(TypeError, match="CrossEncoder"):
        Teacher(3.5)


def test_bfloat16_autocast_keeps_float32_outputs_close_to_full_precision(tiny_cross_encoder_path, teacher, tmp_path):
    from md2pr_st.teacher import AttentionRecorder, AttentionStoreError

    fast = Teacher(str(tiny_cross_encoder_path), autocast_dtype="bfloat16", cache_scores=False)
    full = teacher.score_and_attend(PAIRS)
    out = fast.score_and_attend(PAIRS)
    assert out.scores.dtype == torch.float32 and not torch.equal(out.scores, full.scores)  # it did run in bf16
    torch.testing.assert_close(out.scores, full.scores, atol=0.05, rtol=0.05)
    for got, want in zip(out.attention, full.attention):
        assert got.weights.dtype == torch.float32
        torch.testing.assert_close(got.weights.sum(dim=1), torch.ones(got.weights.shape[0]))
        torch.testing.assert_close(got.weights, want.weights, atol=0.02, rtol=0.1)
    assert fast.get_config_dict()["autocast_dtype"] == "bfloat16"
    AttentionRecorder(teacher, tmp_path / "store", top_k=None).score(PAIRS)
    with pytest.raises(AttentionStoreError):  # a full-precision store is not appended to in bfloat16
        AttentionRecorder(fast, tmp_path / "store", top_k=None)
    with pytest.raises(ValueError, match="autocast_dtype must be None, 'bfloat16' or 'float16'"):
        Teacher(str(tiny_cross_encoder_path), autocast_dtype="int8")
