"""Token alignment between the teacher's and the student's tokenizers, by character offsets.

The word-level loss compares the teacher's attention from query tokens to passage tokens with the
student's token interaction map. The two models may tokenize differently, so their token axes are
first put on a common footing:

- **same vocabulary** (fast path): when both tokenizers share one vocabulary and produce the same ids,
  teacher token k is student token k (position by position), and nothing is pooled;
- **different tokenizers** (word level): both token sequences are mapped, through their character
  offsets into the same text, onto the words of that text (``\\w+`` runs and single punctuation
  marks, the BERT pre-tokenization), and sub-word values are pooled into words.

Pooling (used identically for the teacher's attention and the student's softmax): a row of the map
is a probability distribution over passage tokens, so

- the passage (column) side is **summed** over a word's sub-words: the mass a query token puts on
  a word is the sum of the mass on its pieces, and each row still sums to 1;
- the query (row) side is **averaged** over a word's sub-words: the word's distribution is the mean
  of its pieces' distributions, which is again a distribution, and does not grow with the number
  of pieces a tokenizer happens to split the word into.

Truncation: the two models may truncate a text at different lengths. Only the overlap is aligned:
tokens past the shorter side, and any word cut in the middle by either side, are dropped; no index
can go out of range. See :func:`align_pair`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PairAlignment",
    "SideAlignment",
    "StudentText",
    "align_pair",
    "align_side",
    "decode_student_texts",
    "pool_teacher_attention",
    "pooling_matrices",
    "same_vocabulary",
    "token_word_ids",
    "word_spans",
]

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class StudentText:
    """A text as the student saw it: the decoded content tokens of one row of a student batch.

    Attributes:
        text: the decoded text (prompt, special tokens and padding removed).
        positions: the position in the padded student row of each content token.
        ids: the student token id at each of those positions.
        offsets: ``(start, end)`` character offsets of each content token in ``text``; None when re-tokenizing
            the decoded text does not give back the same ids (then only the same-vocabulary path can align it).
    """

    text: str
    positions: list[int]
    ids: list[int]
    offsets: list[tuple[int, int]] | None


@dataclass
class SideAlignment:
    """Units (tokens or words) of one side (query or passage) present in both models.

    ``groups[u] = (student_positions, teacher_indices)``: the student row positions and the teacher block
    indices (rows for the query side, columns for the passage side) of unit ``u``.
    """

    groups: list[tuple[list[int], list[int]]]
    mode: str  # "token" or "word"


@dataclass
class PairAlignment:
    query: SideAlignment
    passage: SideAlignment


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text``: runs of word characters, and each punctuation mark alone.

    Example:
        >>> from md2pr_st.alignment import word_spans
        >>> word_spans("What's MD2PR?")
        [(0, 4), (4, 5), (5, 6), (7, 12), (12, 13)]
    """
    return [match.span() for match in _WORD.finditer(text)]


def token_word_ids(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """The word index of each token (-1 for a token with an empty span or outside every word).

    A token belongs to the word holding its first character; a token that starts on a space (byte-level BPE
    keeps the space with the next word) belongs to the first word it overlaps.

    Example:
        >>> from md2pr_st.alignment import token_word_ids
        >>> token_word_ids([(0, 2), (2, 4), (4, 5), (5, 7), (7, 7)], [(0, 4), (5, 7)])
        [0, 0, -1, 1, -1]
    """
    starts = [s for s, _ in spans]
    result = []
    for start, end in offsets:
        if end <= start:
            result.append(-1)
            continue
        w = bisect.bisect_right(starts, start) - 1
        if w >= 0 and start < spans[w][1]:
            result.append(w)
        elif w + 1 < len(spans) and spans[w + 1][0] < end:
            result.append(w + 1)
        else:
            result.append(-1)
    return result


def same_vocabulary(tokenizer_a: Any, tokenizer_b: Any) -> bool:
    """Whether two tokenizers share one vocabulary (then tokens can be aligned position by position)."""
    if tokenizer_a is tokenizer_b:
        return True
    try:
        return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()
    except (AttributeError, NotImplementedError):
        return False


def decode_student_texts(
    tokenizer: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    prompt_length: int | None = None,
    originals: Sequence[str | None] | None = None,
) -> list[StudentText]:
    """For each row of a student batch, the text the teacher should read and where each student token sits in it.

    Special tokens, padding and the first ``prompt_length`` positions (a prompt such as ``"query: "``) are dropped.
    With ``originals`` (the texts the user wrote, one per row), a row's text is its original: the student tokenizer
    re-tokenizes it with character offsets, and when the row's token ids are a prefix of that tokenization (the
    student may have truncated it), the original text, case, punctuation and all, is what the teacher reads, and
    the offsets point into it. Otherwise (no original, or a tokenizer whose ids do not come back) the text is
    decoded from the ids, as the host's ``GISTEmbedLoss`` does for its guide: an uncased student then hands the
    teacher lower-cased text cut at the student's length. ``offsets`` is None when re-tokenizing the decoded text
    does not give back the same ids either; then only the same-vocabulary path can align that row.

    Example:
        >>> from transformers import BertTokenizerFast
        >>> from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
        >>> vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "what", "is", "python", "?"])}
        >>> raw = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        >>> raw.normalizer, raw.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
        >>> tokenizer = BertTokenizerFast(tokenizer_object=raw, do_lower_case=True)
        >>> batch = tokenizer(["What is Python?"], return_tensors="pt")
        >>> decode_student_texts(tokenizer, batch["input_ids"])[0].text  # decoded: lower-cased, re-spaced
        'what is python ?'
        >>> decode_student_texts(tokenizer, batch["input_ids"], originals=["What is Python?"])[0].text
        'What is Python?'
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "The word-level loss needs the student's fast tokenizer (for character offsets), but "
            f"{type(tokenizer).__name__} is a slow one. Load the student with a fast tokenizer."
        )
    ids = input_ids.tolist()
    mask = attention_mask.tolist() if attention_mask is not None else [[1] * len(row) for row in ids]
    # [UNK] stands for characters of the text (an emoji, a symbol outside the vocabulary): content, not markup.
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    skip = int(prompt_length or 0)
    positions = []
    for row, row_mask in zip(ids, mask):
        # The prompt starts at the first attended position (after any left padding), as in Pooling.
        start = next((p for p, m in enumerate(row_mask) if m), 0) + skip
        positions.append([p for p, (t, m) in enumerate(zip(row, row_mask)) if m and p >= start and t not in special])
    content = [[row[p] for p in pos] for row, pos in zip(ids, positions)]
    result: list[StudentText | None] = [None] * len(ids)
    if originals is not None:
        for i, (text, student) in enumerate(zip(originals, _retokenize(tokenizer, originals, content))):
            if student is not None:
                result[i] = StudentText(text, positions[i], content[i], student)
    todo = [i for i, r in enumerate(result) if r is None]
    for i in todo:  # decoding drops [UNK]: those rows align without it, as their decoded text has no trace of it
        keep = [j for j, t in enumerate(content[i]) if t != tokenizer.unk_token_id]
        positions[i], content[i] = [positions[i][j] for j in keep], [content[i][j] for j in keep]
    if todo:
        texts = tokenizer.batch_decode(
            [content[i] for i in todo], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        for i, text, offsets in zip(
            todo, texts, _retokenize(tokenizer, texts, [content[i] for i in todo], exact=True)
        ):
            result[i] = StudentText(text, positions[i], content[i], offsets)
    return result


def _retokenize(
    tokenizer: Any, texts: Sequence[str | None], content: Sequence[list[int]], exact: bool = False
) -> list[list[tuple[int, int]] | None]:
    """Offsets of each text's tokens when the row's ids are what the tokenizer gives for it (all of them with
    ``exact``, else a prefix: the student truncated the text); None where they are not."""
    valid = [i for i, text in enumerate(texts) if isinstance(text, str)]
    out: list[list[tuple[int, int]] | None] = [None] * len(texts)
    if not valid:
        return out
    encoded = tokenizer([texts[i] for i in valid], add_special_tokens=False, return_offsets_mapping=True)
    for i, re_ids, offsets in zip(valid, encoded["input_ids"], encoded["offset_mapping"]):
        row = content[i]
        if (list(re_ids) == row) if exact else (list(re_ids[: len(row)]) == row and len(row) > 0):
            out[i] = [tuple(o) for o in offsets[: len(row)]]
    return out


def align_side(
    student: StudentText,
    teacher_ids: Sequence[int],
    teacher_offsets: Sequence[tuple[int, int]],
    same_vocab: bool,
) -> SideAlignment | None:
    """Align one text's student tokens with its teacher tokens; None when nothing can be aligned.

    Same vocabulary: position by position over the overlap ``min(len(student), len(teacher))``, provided the ids
    agree there. Otherwise words: each token goes to the word holding it; words cut by either side's truncation
    (ending past the last character that side covers) and words missing on either side are dropped.

    Example:
        >>> from md2pr_st.alignment import StudentText, align_side
        >>> student = StudentText("cats sleep", positions=[1, 2, 3], ids=[7, 8, 9], offsets=[(0, 3), (3, 4), (5, 10)])
        >>> align_side(student, teacher_ids=[50, 60], teacher_offsets=[(0, 4), (5, 10)], same_vocab=False).groups
        [([1, 2], [0]), ([3], [1])]
        >>> align_side(student, teacher_ids=[50], teacher_offsets=[(0, 4)], same_vocab=False).groups
        [([1, 2], [0])]
    """
    if same_vocab:
        n = min(len(student.ids), len(teacher_ids))
        if n and list(student.ids[:n]) == list(teacher_ids[:n]):
            return SideAlignment([([student.positions[k]], [k]) for k in range(n)], "token")
    if student.offsets is None or not teacher_offsets:
        return None
    spans = word_spans(student.text)
    student_words = token_word_ids(student.offsets, spans)
    teacher_words = token_word_ids(teacher_offsets, spans)
    # The last character each side covers: a word ending later was cut by that side's truncation.
    covered = min(max((e for _, e in student.offsets), default=0), max((e for _, e in teacher_offsets), default=0))
    student_groups: dict[int, list[int]] = {}
    teacher_groups: dict[int, list[int]] = {}
    for k, w in enumerate(student_words):
        if w >= 0:
            student_groups.setdefault(w, []).append(student.positions[k])
    for k, w in enumerate(teacher_words):
        if w >= 0:
            teacher_groups.setdefault(w, []).append(k)
    groups = [
        (student_groups[w], teacher_groups[w])
        for w in sorted(student_groups)
        if w in teacher_groups and spans[w][1] <= covered
    ]
    return SideAlignment(groups, "word") if groups else None


def align_pair(
    query: StudentText,
    passage: StudentText,
    block: Any,
    same_vocab: bool | tuple[bool, bool],
) -> PairAlignment | None:
    """Align a (query, passage) pair of student texts with the teacher's :class:`~md2pr_st.teacher.AttentionBlock`.

    ``same_vocab`` may be one flag or a (query side, passage side) pair, for a student with separate query and
    document towers (a ``Router``). Returns None when either side has nothing in common (e.g. the teacher
    truncated the passage away entirely).
    """
    query_same, passage_same = (same_vocab, same_vocab) if isinstance(same_vocab, bool) else same_vocab
    q = align_side(query, block.query_ids, block.query_offsets, query_same)
    if q is None:
        return None
    d = align_side(passage, block.passage_ids, block.passage_offsets, passage_same)
    if d is None:
        return None
    return PairAlignment(q, d)


def pooling_matrices(groups: Sequence[tuple[list[int], list[int]]], length: int, side: int) -> tuple[Tensor, Tensor]:
    """Dense pooling matrices of one side for the student (``side=0``) or the teacher (``side=1``).

    Returns ``(row_mean, col_sum)``: ``row_mean`` of shape ``(units, length)`` averages a unit's tokens
    (for the query side), ``col_sum`` of shape ``(length, units)`` sums them (for the passage side).

    Example:
        >>> from md2pr_st.alignment import pooling_matrices
        >>> row_mean, col_sum = pooling_matrices([([0, 1], [0]), ([3], [1])], length=4, side=0)
        >>> row_mean
        tensor([[0.5000, 0.5000, 0.0000, 0.0000],
                [0.0000, 0.0000, 0.0000, 1.0000]])
        >>> col_sum.T
        tensor([[1., 1., 0., 0.],
                [0., 0., 0., 1.]])
    """
    col_sum = torch.zeros(length, len(groups))
    for u, group in enumerate(groups):
        col_sum[group[side], u] = 1.0
    row_mean = col_sum.T / col_sum.sum(dim=0).unsqueeze(1)
    return row_mean, col_sum


def pool_teacher_attention(
    weights: Tensor | np.ndarray, alignment: PairAlignment, temperature: float = 1.0
) -> np.ndarray:
    """The teacher's attention block pooled onto the aligned units, rows renormalised over the kept passage units.

    ``T = renorm_rows((R_q A C_d)^(1 / T_a))`` with ``R_q`` averaging each query unit's rows, ``C_d`` summing each
    passage unit's columns (see the module docstring for why) and ``T_a`` the attention ``temperature``: 1 keeps
    the attention as it is, ``T_a < 1`` sharpens each row (``softmax(log(row) / T_a)``). Token-mode alignments (all units single tokens) reduce to
    selecting rows and columns. Computed in numpy: these are many tiny per-pair operations, where torch's
    per-call overhead (and thread wake-ups) would dominate.

    Example:
        >>> import torch
        >>> from md2pr_st.alignment import PairAlignment, SideAlignment, pool_teacher_attention
        >>> weights = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
        >>> query = SideAlignment([([1, 2], [0, 1])], "word")
        >>> passage = SideAlignment([([1], [0]), ([2, 3], [1, 2])], "word")
        >>> pool_teacher_attention(weights, PairAlignment(query, passage))
        array([[0.3, 0.7]], dtype=float32)
        >>> pool_teacher_attention(weights, PairAlignment(query, passage), temperature=0.5).round(4)  # 0.09 : 0.49
        array([[0.1552, 0.8448]], dtype=float32)
    """
    a = weights.numpy() if isinstance(weights, Tensor) else np.asarray(weights)
    a = a.astype(np.float32, copy=False)
    query_groups = [t for _, t in alignment.query.groups]
    passage_groups = [t for _, t in alignment.passage.groups]
    if all(len(g) == 1 for g in query_groups):
        rows = a[[g[0] for g in query_groups]]
    else:
        rows = np.stack([a[g].mean(axis=0) for g in query_groups])
    if all(len(g) == 1 for g in passage_groups):
        pooled = rows[:, [g[0] for g in passage_groups]]
    else:
        pooled = np.stack([rows[:, g].sum(axis=1) for g in passage_groups], axis=1)
    if temperature != 1.0:
        # Scaled by the row maximum first, so that the power cannot underflow the whole row.
        peak = np.maximum(pooled.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
        pooled = (pooled / peak) ** (1.0 / temperature)
    total = pooled.sum(axis=1, keepdims=True)
    return pooled / np.maximum(total, np.finfo(np.float32).tiny)
