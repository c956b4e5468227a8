"""Token alignment between teacher and student tokenizers, by character offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from md2pr_st.alignment import (
    PairAlignment,
    StudentText,
    align_pair,
    align_side,
    decode_student_texts,
    pool_teacher_attention,
    same_vocabulary,
    token_word_ids,
    word_spans,
)
from md2pr_st.teacher import AttentionBlock
from tiny_models import build_byte_level_bpe_tokenizer, build_tiny_bert, build_tiny_char_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(build_tiny_bert(tmp_path_factory.mktemp("wp"))))


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(build_tiny_char_bert(tmp_path_factory.mktemp("char"))))


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    return build_byte_level_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


def student_text(tokenizer, text, max_length=64, prompt=None):
    batch = tokenizer(
        [text if prompt is None else prompt + text], truncation=True, max_length=max_length, return_tensors="pt"
    )
    prompt_length = None
    if prompt is not None:
        prompt_length = len(tokenizer(prompt)["input_ids"]) - 1
    return decode_student_texts(tokenizer, batch["input_ids"], batch["attention_mask"], prompt_length)[0]


def teacher_side(tokenizer, text, max_tokens=None):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    if max_tokens is not None:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    return ids, offsets


def test_word_spans_and_token_words_by_hand():
    assert word_spans("paris, france") == [(0, 5), (5, 6), (7, 13)]
    # byte-level BPE style: a token starting on the space belongs to the next word
    assert token_word_ids([(0, 5), (5, 6), (6, 9), (9, 13)], [(0, 5), (5, 6), (7, 13)]) == [0, 1, 2, 2]


def test_decode_student_texts_drops_specials_padding_and_prompt(word_tokenizer):
    batch = word_tokenizer(["query: python snake", "query: tea"], padding=True, return_tensors="pt")
    prompt_length = len(word_tokenizer("query: ")["input_ids"]) - 1
    rows = decode_student_texts(word_tokenizer, batch["input_ids"], batch["attention_mask"], prompt_length)
    assert [r.text for r in rows] == ["python snake", "tea"]
    assert rows[0].positions == [3, 4] and rows[1].positions == [3]
    assert rows[0].offsets == [(0, 6), (7, 12)]
    assert rows[0].ids == batch["input_ids"][0, 3:5].tolist()


def test_same_vocabulary_aligns_position_by_position(word_tokenizer):
    student = student_text(word_tokenizer, "python is a snake")
    ids, offsets = teacher_side(word_tokenizer, student.text)
    side = align_side(student, ids, offsets, same_vocab=same_vocabulary(word_tokenizer, word_tokenizer))
    assert side.mode == "token"
    assert side.groups == [([1], [0]), ([2], [1]), ([3], [2]), ([4], [3])]


def test_different_split_vocabularies_pool_to_words(word_tokenizer, char_tokenizer):
    # student: whole-word WordPiece; teacher: a character-level WordPiece of the same text
    student = student_text(word_tokenizer, "Python is cats")  # python | is | cat ##s
    assert word_tokenizer.convert_ids_to_tokens(student.ids) == ["python", "is", "cat", "##s"]
    ids, offsets = teacher_side(char_tokenizer, student.text)
    assert len(ids) == 6 + 2 + 4
    assert not same_vocabulary(word_tokenizer, char_tokenizer)
    side = align_side(student, ids, offsets, same_vocab=False)
    assert side.mode == "word"
    assert side.groups == [([1], [0, 1, 2, 3, 4, 5]), ([2], [6, 7]), ([3, 4], [8, 9, 10, 11])]


def test_byte_level_bpe_against_wordpiece(word_tokenizer, bpe_tokenizer):
    student = student_text(word_tokenizer, "what is python")
    ids, offsets = teacher_side(bpe_tokenizer, student.text)
    side = align_side(student, ids, offsets, same_vocab=False)
    spans = word_spans(student.text)
    teacher_words = token_word_ids(offsets, spans)
    assert [s for s, _ in side.groups] == [[1], [2], [3]]
    assert [t for _, t in side.groups] == [[k for k, w in enumerate(teacher_words) if w == i] for i in range(3)]
    assert sorted(k for _, t in side.groups for k in t) == list(range(len(ids)))


def test_truncation_at_different_lengths_aligns_only_the_overlap(word_tokenizer, char_tokenizer):
    # the teacher (character vocab) stops in the middle of "snake": that cut word is dropped
    student = student_text(word_tokenizer, "python is a snake")
    ids, offsets = teacher_side(char_tokenizer, student.text, max_tokens=6 + 2 + 1 + 2)  # ... a | s ##n
    side = align_side(student, ids, offsets, same_vocab=False)
    assert [s for s, _ in side.groups] == [[1], [2], [3]]
    assert max(k for _, t in side.groups for k in t) < len(ids)
    # the student truncated harder than the teacher: only the student's words remain
    short = student_text(word_tokenizer, "python is a snake", max_length=4)  # [CLS] python is [SEP]
    assert short.text == "python is"
    ids, offsets = teacher_side(char_tokenizer, "python is a snake")
    side = align_side(short, ids, offsets, same_vocab=False)
    assert side.groups == [([1], [0, 1, 2, 3, 4, 5]), ([2], [6, 7])]
    # same vocabulary, teacher shorter: position by position over the overlap only
    student = student_text(word_tokenizer, "python is a snake")
    ids, offsets = teacher_side(word_tokenizer, student.text, max_tokens=2)
    assert align_side(student, ids, offsets, same_vocab=True).groups == [([1], [0]), ([2], [1])]
    # nothing in common at all
    assert align_side(student, [], [], same_vocab=False) is None


def test_align_pair_and_pool_teacher_attention_by_hand():
    query = StudentText("cats sleep", [1, 2, 3], [7, 8, 9], [(0, 3), (3, 4), (5, 10)])
    passage = StudentText("on mats", [1, 2], [10, 11], [(0, 2), (3, 7)])
    # teacher: query "cats" | "sleep" (2 rows), passage "on" | "ma" "ts" (3 columns)
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    block = AttentionBlock(weights, [1, 2], [3, 4, 5], [(0, 4), (5, 10)], [(0, 2), (3, 5), (5, 7)])
    alignment = align_pair(query, passage, block, same_vocab=False)
    assert isinstance(alignment, PairAlignment)
    assert alignment.query.groups == [([1, 2], [0]), ([3], [1])]
    assert alignment.passage.groups == [([1], [0]), ([2], [1, 2])]
    pooled = pool_teacher_attention(weights, alignment)
    np.testing.assert_allclose(pooled, [[0.2, 0.8], [0.6, 0.4]], rtol=1e-6)
    # a passage word the teacher truncated away is dropped and the row renormalised over what is left
    cut = AttentionBlock(
        weights[:, :2] / weights[:, :2].sum(1, keepdim=True), [1, 2], [3, 4], block.query_offsets, [(0, 2), (3, 5)]
    )
    alignment = align_pair(query, passage, cut, same_vocab=False)
    assert alignment.passage.groups == [([1], [0])]
    np.testing.assert_allclose(pool_teacher_attention(cut.weights, alignment), np.ones((2, 1)), rtol=1e-6)


def test_decode_student_texts_with_left_padding_and_prompt(word_tokenizer):
    word_tokenizer.padding_side = "left"
    try:
        batch = word_tokenizer(["query: python snake", "query: tea"], padding=True, return_tensors="pt")
    finally:
        word_tokenizer.padding_side = "right"
    prompt_length = len(word_tokenizer("query: ")["input_ids"]) - 1
    rows = decode_student_texts(word_tokenizer, batch["input_ids"], batch["attention_mask"], prompt_length)
    assert [r.text for r in rows] == ["python snake", "tea"]
    assert rows[1].positions == [4]  # one left pad, [CLS] query :, then "tea"


def test_a_character_outside_the_vocabulary_keeps_the_original_text(word_tokenizer):
    """A symbol the student's vocabulary lacks becomes [UNK]: it is part of the text, so the row's ids are still a
    prefix of the original's tokenization and the teacher reads the original (an offline teacher looks pairs up by
    their exact texts: a decoded, lower-cased text is not in its store)."""
    originals = ["Paris \u25b6 France!", "Python is a snake."]
    batch = word_tokenizer(originals, padding=True, truncation=True, max_length=5, return_tensors="pt")
    assert word_tokenizer.unk_token_id in batch["input_ids"][0].tolist()
    rows = decode_student_texts(word_tokenizer, batch["input_ids"], batch["attention_mask"], originals=originals)
    assert [r.text for r in rows] == originals
    unk = batch["input_ids"][0].tolist().index(word_tokenizer.unk_token_id)
    assert unk in rows[0].positions and rows[0].offsets[rows[0].positions.index(unk)] == (6, 7)


def test_a_decoded_row_with_unk_still_aligns(word_tokenizer):
    """Without its original text, a row's [UNK] cannot be decoded back: it is left out, and the rest still aligns."""
    batch = word_tokenizer(["Paris \u25b6 France!"], return_tensors="pt")
    row = decode_student_texts(word_tokenizer, batch["input_ids"], batch["attention_mask"])[0]
    assert word_tokenizer.unk_token_id not in row.ids and row.offsets is not None
    assert len(row.offsets) == len(row.ids) == len(row.positions)
