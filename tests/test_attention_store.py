"""Recorded teacher attention: AttentionRecorder (in the false-negative pass) and OfflineTeacher (in the losses)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from md2pr_st.false_negatives import FalseNegativeFilter
from md2pr_st.losses import MD2PRLoss, WordLevelDistillationLoss
from md2pr_st.teacher import (
    AttentionRecorder,
    AttentionStoreError,
    MissingPairsError,
    OfflineTeacher,
    Teacher,
    candidate_pairs,
)
from tiny_models import build_tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERIES = ["what is python", "capital of france", "tea or coffee"]
POSITIVES = ["python is a snake", "paris is the capital city of france", "tea and coffee in paris"]
NEGATIVES = ["java island in the sea", "the river of the city", "the cat and the dog"]
# Longer passages than any top_k below, so the top-k really drops columns.
LONG = [
    "python is a snake and a language of the island of java where the river meets the sea",
    "paris is the capital city of france on the river and the city of tea and coffee",
    "tea or coffee is what the cat and the dog do not drink in the city of paris in france",
]


@pytest.fixture(scope="module")
def teacher(tiny_cross_encoder_path):
    return Teacher(str(tiny_cross_encoder_path))


def features(model, *columns):
    return [model.preprocess(list(column)) for column in columns]


def pairs_of(*columns):
    return candidate_pairs(columns[0], [list(row) for row in zip(*columns[1:])])


@contextmanager
def eval_mode(model):
    """No dropout inside the block, so runs compare; each module's mode is restored after it (the session's
    ``tiny_model`` is shared with other test files, whose inner transformer is in eval mode as loaded)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def run_loss(model, loss_fn, columns):
    """The loss parts and the student's gradients of one batch, without dropout."""
    with eval_mode(model):
        model.zero_grad()
        parts = loss_fn(features(model, *columns), None)
        torch.stack(list(parts.values())).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
    return {k: v.item() for k, v in parts.items()}, grads


def shard_bytes(path):
    return sum(entry["bytes"] for entry in json.loads((path / "manifest.json").read_text())["shards"])


@pytest.mark.parametrize("cased_teacher", [False, True], ids=["same_vocabulary", "word_pooling"])
def test_all_tokens_in_float32_reproduce_the_online_loss_and_gradients(tiny_model, teacher, tmp_path, cased_teacher):
    if cased_teacher:  # another vocabulary: the word level pools sub-words to words
        teacher = Teacher(str(build_tiny_bert(tmp_path / "cased", num_labels=1, seed=4, cased=True)))
    columns = (QUERIES, POSITIVES, NEGATIVES)
    AttentionRecorder(teacher, tmp_path / "store", top_k=None, weights_dtype="float32").score(pairs_of(*columns))
    offline = OfflineTeacher(tmp_path / "store")
    online_fn = MD2PRLoss(tiny_model, teacher=teacher, beta=1.0, false_negative_margin=0.1)
    offline_fn = MD2PRLoss(tiny_model, teacher=offline, beta=1.0, false_negative_margin=0.1)
    assert offline_fn.teacher is offline  # passed through as it is, not wrapped
    online, online_grads = run_loss(tiny_model, online_fn, columns)
    recorded, recorded_grads = run_loss(tiny_model, offline_fn, columns)
    assert set(recorded) == {"contrastive", "sentence_level", "word_level"}
    for key in online:
        assert recorded[key] == pytest.approx(online[key], rel=1e-6, abs=1e-7)
    assert len(recorded_grads) == len(online_grads) > 0
    for a, b in zip(online_grads, recorded_grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert offline_fn.masked_counts == online_fn.masked_counts
    assert offline_fn.last_aligned_fraction == online_fn.last_aligned_fraction > 0
    # the blocks themselves: same tokens and offsets (re-tokenized), weights equal to float precision
    for got, want in zip(offline.attention(pairs_of(*columns)), teacher.attention(pairs_of(*columns))):
        assert (got.query_ids, got.passage_ids) == (want.query_ids, want.passage_ids)
        assert (got.query_offsets, got.passage_offsets) == (want.query_offsets, want.passage_offsets)
        torch.testing.assert_close(got.weights, want.weights, rtol=1e-6, atol=1e-7)
    # the word level alone, through WordLevelDistillationLoss, agrees too
    word = [WordLevelDistillationLoss(tiny_model, t) for t in (teacher, offline)]
    with eval_mode(tiny_model):
        values = [fn(features(tiny_model, *columns), None).item() for fn in word]
    assert values[1] == pytest.approx(values[0], rel=1e-6)


def test_top_k_storage_is_smaller_and_close(tiny_model, teacher, tmp_path):
    columns = (QUERIES, LONG, NEGATIVES)
    pairs = pairs_of(*columns)
    for name, top_k in (("all", None), ("top4", 4)):
        AttentionRecorder(teacher, tmp_path / name, top_k=top_k).score(pairs)
    full, top = OfflineTeacher(tmp_path / "all"), OfflineTeacher(tmp_path / "top4")
    assert shard_bytes(tmp_path / "top4") < shard_bytes(tmp_path / "all")

    def attention_bytes(store):  # without the per-shard header and per-pair fields, which tiny shards are mostly
        return sum(shard.weights.nbytes + shard.indices.nbytes for shard in store._store.shards)

    assert attention_bytes(top) < 0.6 * attention_bytes(full)  # the short negatives keep all their columns
    online = teacher.attention(pairs)
    for got, want, exact in zip(top.attention(pairs), online, full.attention(pairs)):
        torch.testing.assert_close(exact.weights, want.weights, rtol=2e-3, atol=1e-4)  # float16, all tokens
        torch.testing.assert_close(got.weights.sum(dim=1), torch.ones(len(got.query_ids)))
        if want.weights.shape[1] <= 8:  # 4 weights and their 4 columns take as many bytes as the row: kept whole
            torch.testing.assert_close(got.weights, want.weights, rtol=2e-3, atol=1e-4)
            continue
        assert ((got.weights > 0).sum(dim=1) == 4).all()
        # each kept weight is the online one renormalised over the row's top 4
        top4 = want.weights.topk(4, dim=1)
        torch.testing.assert_close(
            got.weights.gather(1, top4.indices), top4.values / top4.values.sum(1, keepdim=True), rtol=2e-3, atol=1e-4
        )
    kwargs = {"false_negative_margin": 0.1, "beta": 1.0}
    reference = run_loss(tiny_model, MD2PRLoss(tiny_model, teacher=teacher, **kwargs), columns)[0]
    fp16 = run_loss(tiny_model, MD2PRLoss(tiny_model, teacher=full, **kwargs), columns)[0]
    approximate = run_loss(tiny_model, MD2PRLoss(tiny_model, teacher=top, **kwargs), columns)[0]
    assert fp16["word_level"] == pytest.approx(reference["word_level"], rel=1e-3)
    for key in ("contrastive", "sentence_level"):  # the logits are stored in float32 either way
        assert approximate[key] == pytest.approx(reference[key], rel=1e-6)
    # A random teacher's rows are nearly flat, so its top 4 of ~20 columns hold only about half the mass: L_w's
    # value moves (mostly the target's entropy, a constant), while its gradient keeps its direction.
    values, grads = [], []
    for source in (teacher, top):
        with eval_mode(tiny_model):
            tiny_model.zero_grad()
            value = WordLevelDistillationLoss(tiny_model, source)(features(tiny_model, *columns), None)
            value.backward()
            values.append(value.item())
            grads.append(torch.cat([p.grad.ravel() for p in tiny_model.parameters() if p.grad is not None]))
    tiny_model.zero_grad()
    assert values[1] == pytest.approx(values[0], rel=0.3)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.9


def test_the_recorder_as_the_filter_s_scorer_stores_every_scored_pair_in_one_pass(teacher, tmp_path):
    rows = Dataset.from_dict({"query": QUERIES, "positive": POSITIVES, "negative_1": NEGATIVES, "negative_2": LONG})
    calls = {"score": 0, "score_and_attend": 0}
    wrapped = Teacher(teacher.cross_encoder)
    for name in calls:
        original = getattr(wrapped, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(wrapped, name, counted)
    recorder = AttentionRecorder(wrapped, tmp_path / "store", shard_size=4)
    scored = FalseNegativeFilter(recorder, num_negatives=1).score(rows)
    pairs = [(r["query"], d) for r in rows for d in (r["positive"], r["negative_1"], r["negative_2"])]
    assert calls == {"score": 0, "score_and_attend": 3}  # 9 pairs in shards of 4: one teacher pass, no second
    np.testing.assert_allclose(np.array(scored["scores"]).ravel(), teacher.score(pairs), rtol=1e-5, atol=1e-5)
    offline = OfflineTeacher(tmp_path / "store", verify=True)
    assert len(offline) == len(recorder) == 9 and not offline.missing(pairs) and pairs[4] in offline
    assert len(json.loads((tmp_path / "store" / "manifest.json").read_text())["shards"]) == 3
    np.testing.assert_array_equal(offline.score(pairs), np.array(scored["scores"], dtype=np.float32).ravel())
    # a later round over the same candidates reads them back: no teacher call, nothing stored twice
    again = AttentionRecorder(wrapped, tmp_path / "store", shard_size=4).score(pairs + pairs[:2])
    assert calls["score_and_attend"] == 3 and len(OfflineTeacher(tmp_path / "store")) == 9
    np.testing.assert_array_equal(again, offline.score(pairs + pairs[:2]))


def test_training_on_the_filter_s_rows_finds_every_pair_in_the_store(tiny_model_path, teacher, tmp_path):
    """The collator hands the loss the original texts, without prompts: exactly the texts the filter scored."""
    rows = Dataset.from_dict(
        {
            "query": QUERIES * 2,
            "positive": POSITIVES + LONG,
            "negative_1": NEGATIVES * 2,
            "negative_2": LONG + POSITIVES,
        }
    )
    filtered = FalseNegativeFilter(AttentionRecorder(teacher, tmp_path / "store"), num_negatives=1, action="mask")
    data = filtered.apply(rows)
    offline = OfflineTeacher(tmp_path / "store")
    seen = []
    original = offline.score_and_attend

    def record(pairs, batch_size=None):
        seen.extend(pairs)
        return original(pairs, batch_size)

    offline.score_and_attend = record
    student = SentenceTransformer(str(tiny_model_path), device="cpu")
    loss = MD2PRLoss(student, teacher=offline, beta=1.0, false_negative_margin=filtered.margin_)
    args = SentenceTransformerTrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=3,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        prompts={"query": "query: ", "positive": "passage: ", "negative_1": "passage: "},
    )
    trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=data, loss=loss)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(np.isfinite(entry["word_level"]) for entry in logs)
    assert len(seen) == 3 * 3 * 2 and not offline.missing(seen)  # 3 steps of 3 rows x 2 candidates
    assert not any(q.startswith("query: ") or d.startswith("passage: ") for q, d in seen)  # the texts as scored
    assert loss.last_aligned_fraction == 1.0


def test_a_missing_pair_is_a_clear_error(tiny_model, teacher, tmp_path):
    AttentionRecorder(teacher, tmp_path / "store").score(pairs_of(QUERIES, POSITIVES))
    offline = OfflineTeacher(tmp_path / "store")
    with pytest.raises(
        MissingPairsError, match=r"1 of 2 .*'tea or coffee'.*AttentionRecorder.*online teacher"
    ) as info:
        offline.score([(QUERIES[0], POSITIVES[0]), ("tea or coffee", "a snake")])
    assert info.value.pairs == [("tea or coffee", "a snake")]
    loss_fn = MD2PRLoss(tiny_model, teacher=offline, beta=1.0)  # the negatives were never scored
    with pytest.raises(MissingPairsError, match=r"3 of 6 \(query, passage\) pairs"):
        loss_fn(features(tiny_model, QUERIES, POSITIVES, NEGATIVES), None)


def test_a_partial_or_corrupt_store_is_a_clear_error(teacher, tmp_path):
    with pytest.raises(AttentionStoreError, match="not an attention store"):
        OfflineTeacher(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AttentionStoreError, match="holds files but no manifest"):
        AttentionRecorder(teacher, tmp_path)

    def fresh(name):
        AttentionRecorder(teacher, tmp_path / name, shard_size=3).score(pairs_of(QUERIES, POSITIVES, NEGATIVES))
        return tmp_path / name, tmp_path / name / "shard-00001.safetensors"

    store, shard = fresh("truncated")
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(AttentionStoreError, match="shard-00001.safetensors has .* bytes .* truncated"):
        OfflineTeacher(store)
    store, shard = fresh("missing")
    shard.unlink()
    with pytest.raises(AttentionStoreError, match="shard-00001.safetensors is missing .*partial"):
        OfflineTeacher(store)
    store, shard = fresh("header")
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\xff\xfe{["
    shard.write_bytes(bytes(data))
    with pytest.raises(AttentionStoreError, match="shard-00001.safetensors is corrupt"):
        OfflineTeacher(store)
    store, shard = fresh("flipped")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, valid header: only the checksum sees it
    shard.write_bytes(bytes(data))
    OfflineTeacher(store)
    with pytest.raises(AttentionStoreError, match="fails its sha256 check"):
        OfflineTeacher(store, verify=True)
    store, _ = fresh("manifest")
    (store / "manifest.json").write_text('{"format": "md2pr-attention-store", "version": 1, "shar')
    with pytest.raises(AttentionStoreError, match="manifest.json is not a readable"):
        OfflineTeacher(store)
    store, _ = fresh("tokenizer")  # another tokenizer would misplace every attention row: refused, not guessed
    Teacher(str(build_tiny_bert(tmp_path / "cased", num_labels=1, cased=True))).tokenizer.save_pretrained(
        str(store / "tokenizer")
    )
    with pytest.raises(AttentionStoreError, match="tokenizer does not give back the teacher's tokens"):
        OfflineTeacher(store).attention([("what is python", "python is a snake")])


def test_the_store_refuses_another_teacher_or_other_settings(tiny_model, teacher, tiny_cross_encoder_path, tmp_path):
    store = tmp_path / "store"
    AttentionRecorder(teacher, store).score(pairs_of(QUERIES, POSITIVES))
    other = Teacher(str(build_tiny_bert(tmp_path / "other", num_labels=1, seed=7)))
    with pytest.raises(AttentionStoreError, match=r"different fingerprint \(fingerprint: stored '[0-9a-f]{64}'"):
        AttentionRecorder(other, store)
    with pytest.raises(AttentionStoreError, match="different fingerprint"):
        OfflineTeacher(store, teacher=other)
    with pytest.raises(AttentionStoreError, match="different layers, top_k"):
        AttentionRecorder(Teacher(str(tiny_cross_encoder_path), layers=(0,)), store, top_k=8)
    with pytest.raises(AttentionStoreError, match="different max_length"):
        OfflineTeacher(store, teacher=Teacher(str(tiny_cross_encoder_path), max_length=32))
    offline = OfflineTeacher(store, teacher=Teacher(str(tiny_cross_encoder_path)))  # the same weights, reloaded
    assert offline.fingerprint == AttentionRecorder(teacher, store).fingerprint
    config = offline.get_config_dict()
    assert config["model"] == teacher.model_name and config["top_k"] == 16 and config["layers"] == [1]
    loss_config = MD2PRLoss(tiny_model, teacher=offline).get_config_dict()  # name, layers and heads from the store
    assert loss_config["teacher"] == teacher.model_name and loss_config["teacher_layers"] == [1]
