from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from md2pr_st.alignment import StudentText, align_pair, pool_teacher_attention, same_vocabulary
from md2pr_st.citation import MD2PR_CITATION
from md2pr_st.losses._shared import (
    StudentTokenizers,
    as_teacher,
    check_columns,
    decode_columns,
    embed_with_tokens,
    keep_original_texts,
    original_texts_hidden,
    student_tokenizer,
    teacher_name,
    teacher_pairs,
)
from md2pr_st.teacher import AttentionBlock, Teacher
from md2pr_st.validation import check_positive

logger = logging.getLogger(__name__)


def word_level_kl(
    query_tokens: Tensor,
    passage_tokens: Tensor,
    query_unit: Tensor,
    query_weight: Tensor,
    passage_unit: Tensor,
    target: Tensor,
    row_mask: Tensor,
    temperature: float,
) -> Tensor:
    """Per-pair word-level KL between the teacher's attention and the student's token interaction map.

    For each pair p (shapes: P pairs, Lq / Ld student tokens, U / V aligned query / passage units)::

        M_ij   = <h^q_i / |h^q_i|, h^d_j / |h^d_j|> / tau_w              (student interaction map, Lq x Ld)
        P_i    = softmax_j(M_ij) over the passage tokens that belong to a unit
        S_uv   = sum_{i in u} w_i sum_{j in v} P_ij                     (w_i = 1 / |u|: rows averaged, columns summed)
        L_w(p) = mean_{u in row_mask} KL(target_u || S_u) = mean_u sum_v target_uv log(target_uv / S_uv)

    Units are words, or single tokens when teacher and student share a vocabulary (then S = P restricted to the
    aligned tokens); ``target`` is the teacher's attention pooled the same way, each row summing to 1 (see
    :mod:`md2pr_st.alignment`). Pooling goes through unit indices and ``scatter_add`` rather than dense pooling
    matrices, so memory is O(P * Lq * Ld) like the map itself, not O(P * Ld^2).

    Args:
        query_tokens: (P, Lq, dim) student token embeddings of each pair's query (last layer).
        passage_tokens: (P, Ld, dim) student token embeddings of each pair's passage.
        query_unit: (P, Lq) long, the query unit of each query token; U for a token in no unit.
        query_weight: (P, Lq) float, 1 / (number of tokens in the token's unit); 0 for a token in no unit.
        passage_unit: (P, Ld) long, the passage unit of each passage token; V for a token in no unit (such tokens
            are left out of the softmax).
        target: (P, U, V) teacher distributions, rows summing to 1 where ``row_mask``.
        row_mask: (P, U) bool, the query units present in both models.
        temperature: tau_w.

    Returns:
        (P,) the mean row KL of each pair (0 for a pair without any valid row).

    Example:
        >>> import math, torch
        >>> from md2pr_st.losses.word_level_distillation import word_level_kl
        >>> q = torch.tensor([[[1.0, 0.0]]])                 # one query token
        >>> d = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])     # two passage tokens, cosine 1 and 0
        >>> target = torch.tensor([[[0.5, 0.5]]])
        >>> kl = word_level_kl(q, d, torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([[0, 1]]), target,
        ...                    torch.ones(1, 1, dtype=torch.bool), temperature=1.0)
        >>> p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
        >>> expected = 0.5 * math.log(0.5 / p[0].item()) + 0.5 * math.log(0.5 / p[1].item())
        >>> round(kl.item(), 6) == round(expected, 6)
        True
    """
    pooled = student_word_distribution(
        query_tokens, passage_tokens, query_unit, query_weight, passage_unit, target.shape[1:], temperature
    )
    log_pooled = pooled.clamp_min(torch.finfo(pooled.dtype).tiny).log()
    kl_rows = (torch.xlogy(target, target) - target * log_pooled).sum(dim=-1)
    valid = row_mask.to(kl_rows.dtype)
    return (kl_rows * valid).sum(dim=-1) / valid.sum(dim=-1).clamp_min(1.0)


def student_word_distribution(
    query_tokens: Tensor,
    passage_tokens: Tensor,
    query_unit: Tensor,
    query_weight: Tensor,
    passage_unit: Tensor,
    units: tuple[int, int],
    temperature: float,
) -> Tensor:
    """The student's pooled interaction distribution ``S`` of :func:`word_level_kl`, shape (P, U, V) with
    ``units = (U, V)``: row u is where query unit u's softmax mass falls over the passage units."""
    units_q, units_d = units
    pairs = query_tokens.shape[0]
    query = F.normalize(query_tokens.float(), dim=-1)
    passage = F.normalize(passage_tokens.float(), dim=-1)
    logits = torch.bmm(query, passage.transpose(1, 2)) / temperature
    # A finite fill (not -inf) keeps fully masked padding rows finite; they carry zero pooling weight.
    logits = logits.masked_fill((passage_unit >= units_d).unsqueeze(1), torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1) * query_weight.unsqueeze(-1)
    length_q, length_d = probs.shape[1], probs.shape[2]
    rows = probs.new_zeros(pairs, units_q + 1, length_d)
    rows = rows.scatter_add(1, query_unit.unsqueeze(-1).expand(pairs, length_q, length_d), probs)[:, :units_q]
    pooled = rows.new_zeros(pairs, units_q, units_d + 1)
    return pooled.scatter_add(2, passage_unit.unsqueeze(1).expand(pairs, units_q, length_d), rows)[:, :, :units_d]


class SameVocabulary:
    """Whether the student's query and candidate tokenizers share the teacher's vocabulary (cached per tokenizer):
    then teacher and student tokens align position by position, otherwise through words."""

    def __init__(self, teacher_tokenizer: Any) -> None:
        self.teacher_tokenizer = teacher_tokenizer
        self._cache: dict[int, bool] = {}

    def __call__(self, model: Any, features_list: Sequence[dict[str, Any]]) -> tuple[bool, bool]:
        result = []
        for features in (features_list[0], features_list[1]):
            tokenizer = student_tokenizer(model, features)
            if id(tokenizer) not in self._cache:
                self._cache[id(tokenizer)] = same_vocabulary(tokenizer, self.teacher_tokenizer)
            result.append(self._cache[id(tokenizer)])
        return result[0], result[1]


@dataclass
class WordLevelTargets:
    """The aligned pairs of a batch, ready for :func:`word_level_kl` (pair p: query row, passage row, tensors)."""

    query_index: Tensor
    passage_index: Tensor
    query_unit: Tensor
    query_weight: Tensor
    passage_unit: Tensor
    target: Tensor
    row_mask: Tensor
    num_pairs: int

    @property
    def aligned_fraction(self) -> float:
        return len(self.query_index) / self.num_pairs if self.num_pairs else 0.0


def build_word_level_targets(
    query_texts: Sequence[StudentText],
    candidate_texts: Sequence[Sequence[StudentText]],
    blocks: Sequence[AttentionBlock],
    same_vocab: tuple[bool, bool],
    query_width: int,
    passage_width: int,
    attention_temperature: float = 1.0,
) -> WordLevelTargets:
    """Align every (query b, candidate column c) pair and pool the teacher's attention onto the aligned units.

    ``blocks`` are ordered row-major (pair ``b * C + c``, as :func:`~md2pr_st.teacher.candidate_pairs` builds the
    teacher's pairs); the passage rows are column-major (``c * B + b``, the candidate columns one after the other).
    ``same_vocab`` says, for the query and the passage side, whether the student tokenizer shares the teacher's
    vocabulary (then tokens align position by position). ``attention_temperature`` sharpens the pooled teacher rows
    (see :func:`~md2pr_st.alignment.pool_teacher_attention`).
    """
    batch, columns = len(query_texts), len(candidate_texts)
    kept: list[tuple[int, int, Any, np.ndarray]] = []
    for c, column in enumerate(candidate_texts):
        for b in range(batch):
            p, block = c * batch + b, blocks[b * columns + c]
            alignment = align_pair(query_texts[b], column[b], block, same_vocab=same_vocab)
            if alignment is not None:
                kept.append((b, p, alignment, pool_teacher_attention(block.weights, alignment, attention_temperature)))
    n = len(kept)
    units_q = max((len(a.query.groups) for _, _, a, _ in kept), default=1)
    units_d = max((len(a.passage.groups) for _, _, a, _ in kept), default=1)
    # Built in numpy and converted once: per-pair torch calls would cost more than the math.
    query_unit = np.full((n, query_width), units_q, dtype=np.int64)
    query_weight = np.zeros((n, query_width), dtype=np.float32)
    passage_unit = np.full((n, passage_width), units_d, dtype=np.int64)
    target = np.zeros((n, units_q, units_d), dtype=np.float32)
    row_mask = np.zeros((n, units_q), dtype=bool)
    for k, (_, _, alignment, pooled) in enumerate(kept):
        for u, (positions, _) in enumerate(alignment.query.groups):
            query_unit[k, positions] = u
            query_weight[k, positions] = 1.0 / len(positions)
        for v, (positions, _) in enumerate(alignment.passage.groups):
            passage_unit[k, positions] = v
        target[k, : pooled.shape[0], : pooled.shape[1]] = pooled
        row_mask[k, : pooled.shape[0]] = True
    return WordLevelTargets(
        query_index=torch.tensor([b for b, _, _, _ in kept], dtype=torch.long),
        passage_index=torch.tensor([p for _, p, _, _ in kept], dtype=torch.long),
        query_unit=torch.from_numpy(query_unit),
        query_weight=torch.from_numpy(query_weight),
        passage_unit=torch.from_numpy(passage_unit),
        target=torch.from_numpy(target),
        row_mask=torch.from_numpy(row_mask),
        num_pairs=batch * len(candidate_texts),
    )


def _chunk_sum(
    query_tokens: Tensor,
    passage_tokens: Tensor,
    query_unit: Tensor,
    query_weight: Tensor,
    passage_unit: Tensor,
    target: Tensor,
    row_mask: Tensor,
    temperature: float,
) -> Tensor:
    return word_level_kl(
        query_tokens, passage_tokens, query_unit, query_weight, passage_unit, target, row_mask, temperature
    ).sum()


def _rows(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[index]``, as a view (no copy) when the index is a contiguous range."""
    if len(index) and int(index[-1]) - int(index[0]) == len(index) - 1 and bool((index.diff() == 1).all()):
        return tensor[int(index[0]) : int(index[-1]) + 1]
    return tensor[index.to(tensor.device)]


def word_level_loss(
    query_tokens: Tensor, passage_tokens: Tensor, targets: WordLevelTargets, temperature: float, chunk_size: int
) -> Tensor:
    """Mean of :func:`word_level_kl` over the aligned pairs, in chunks of ``chunk_size`` pairs.

    Each chunk runs under activation checkpointing, so only one chunk's (pairs x Lq x Ld) interaction map is alive
    at a time, in the forward and in the backward pass: memory stays bounded for long passages and many negatives.
    """
    n = len(targets.query_index)
    if n == 0:
        # Nothing aligned: a zero that keeps the graph connected (zero gradient), so the trainer does not break.
        return query_tokens.sum() * 0.0
    device = query_tokens.device
    total = query_tokens.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        args = (
            _rows(query_tokens, targets.query_index[sl]),
            _rows(passage_tokens, targets.passage_index[sl]),
            targets.query_unit[sl].to(device),
            targets.query_weight[sl].to(device),
            targets.passage_unit[sl].to(device),
            targets.target[sl].to(device),
            targets.row_mask[sl].to(device),
            temperature,
        )
        if torch.is_grad_enabled() and (query_tokens.requires_grad or passage_tokens.requires_grad):
            total = total + checkpoint(_chunk_sum, *args, use_reentrant=False)
        else:
            total = total + _chunk_sum(*args)
    return total / n


def _concat_rows(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate (rows, tokens, dim) tensors along rows, right-padding tokens; no copy when they are consecutive
    slices of one tensor (the candidate columns of a merged forward pass)."""
    first = tensors[0]
    base = first._base
    if (
        base is not None
        and base.dim() == first.dim()
        and base.shape[1:] == first.shape[1:]
        and base.shape[0] == sum(t.shape[0] for t in tensors)
        and all(t._base is base and t.is_contiguous() for t in tensors)
        and all(t.storage_offset() == first.storage_offset() + k * first.numel() for k, t in enumerate(tensors))
        and first.storage_offset() == base.storage_offset()
    ):
        return base
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, [0, 0, 0, width - t.shape[1]]) for t in tensors], dim=0)


def word_level_loss_from_outputs(
    outputs: Sequence[dict[str, Tensor]],
    texts: Sequence[Sequence[StudentText]],
    blocks: Sequence[AttentionBlock],
    same_vocab: tuple[bool, bool],
    temperature: float,
    chunk_size: int,
    attention_temperature: float = 1.0,
) -> tuple[Tensor, WordLevelTargets]:
    """L_w of a batch from the student outputs (query first, then candidate columns) and the teacher's blocks."""
    query_tokens = outputs[0]["token_embeddings"]
    passage_tokens = _concat_rows([out["token_embeddings"] for out in outputs[1:]])
    targets = build_word_level_targets(
        texts[0], texts[1:], blocks, same_vocab, query_tokens.shape[1], passage_tokens.shape[1], attention_temperature
    )
    return word_level_loss(query_tokens, passage_tokens, targets, temperature, chunk_size), targets


class WordLevelDistillationLoss(nn.Module):
    def __init__(
        self,
        model: Any,
        teacher: Teacher | Any | str | Path,
        temperature: float = 0.05,
        chunk_size: int = 64,
        attention_temperature: float = 0.4,
    ) -> None:
        """
        MD2PR's word-level distillation: the student's token interaction map between a query and a passage is
        pulled towards the cross-encoder teacher's attention from the query's tokens to the passage's tokens.

        For each (query, candidate) pair of the batch (the positive and every hard negative)::

            A      = teacher attention block: mean over the chosen layers and heads (default: last layer, all
                     heads), query rows x passage columns, special tokens and padding removed, rows renormalised
            M_ij   = <h^q_i, h^d_j> / tau_w        (student last-layer token embeddings, L2-normalised)
            L_w    = mean_pairs mean_i KL( A_i || softmax_j(M_i) )

        Teacher and student tokens are aligned by character offsets (:mod:`md2pr_st.alignment`): position by
        position when both share a vocabulary; otherwise both sides are pooled to words (passage sub-words summed,
        query sub-words averaged, identically for teacher and student) and the KL runs over words. Texts that the
        two models truncate differently are aligned over their overlap only.

        The teacher runs online (attention cannot be precomputed into a dataset column): it reads the texts as the
        user wrote them (the loss makes the student's ``preprocess`` pass the originals on through the host's
        collator; features built without them fall back to the texts decoded from the student's ids). The student's token embeddings are the output of its
        ``Transformer`` module, taken from the same forward pass that gives the sentence embeddings, so nothing is
        added to the model: it saves and loads as a plain SentenceTransformer. The interaction maps are computed
        in chunks of ``chunk_size`` pairs under activation checkpointing, so memory stays bounded for long passages
        and many negatives.

        Args:
            model: The student SentenceTransformer (Transformer-based, with a fast tokenizer).
            teacher: The cross-encoder teacher: a :class:`~md2pr_st.teacher.Teacher` (choose layers and heads
                there), a ``CrossEncoder``, or a Hub id / local folder.
            temperature: tau_w of the student interaction map (cosine similarities of token embeddings).
            chunk_size: Pairs per chunk of the interaction-map computation (memory vs. speed).
            attention_temperature: T_a, applied to the teacher's pooled attention rows, ``A^(1 / T_a)``
                renormalised: 1 keeps them, below 1 sharpens them towards the passage words the teacher attends to most.

        References:
            - MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model, https://arxiv.org/abs/2312.16821

        Requirements:
            1. (query, positive) pairs or (query, positive, negative_1, ..., negative_n) tuples of texts
            2. An online cross-encoder teacher whose attention can be read (eager attention; switched on automatically)

        Inputs:
            +------------------------------------------------+----------------------------------+
            | Inputs                                         | Labels                           |
            +================================================+==================================+
            | (query, positive)                              | none (a label column is ignored) |
            +------------------------------------------------+----------------------------------+
            | (query, positive, negative_1, ..., negative_n) | none (a label column is ignored) |
            +------------------------------------------------+----------------------------------+

        Recommendations:
            - Use it inside :class:`MD2PRLoss`; alone it teaches token interactions but not the ranking.
            - A teacher sharing the student's vocabulary (e.g. a cross-encoder trained from the student's backbone)
              aligns token by token, which is both finer and cheaper than word pooling.
            - Lower ``chunk_size`` if the interaction maps (pairs x query tokens x passage tokens) do not fit.

        Relations:
            - :class:`SentenceLevelDistillationLoss` distils the teacher's scores; this loss distils its attention.
            - :class:`MD2PRLoss` = contrastive + alpha * sentence-level + beta * this loss.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from md2pr_st.losses import WordLevelDistillationLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "query": ["what is python", "capital of france"],
                    "positive": ["Python is a programming language.", "Paris is the capital of France."],
                })
                loss = WordLevelDistillationLoss(model, teacher="cross-encoder/ms-marco-MiniLM-L6-v2")
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        self.model = model
        self._student_tokenizers = StudentTokenizers(model)  # kept: a DDP wrapper replaces self.model
        self.teacher = as_teacher(teacher)
        if self.teacher is not None:
            keep_original_texts(model)  # the teacher reads what the user wrote, not the student's decoding
        if self.teacher is None:
            raise ValueError(
                "WordLevelDistillationLoss needs an online teacher (attention cannot come from a label column): pass "
                "teacher= a CrossEncoder, a Hub id / local folder, or an md2pr_st.teacher.Teacher."
            )
        self.temperature = check_positive("temperature", temperature)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
        self.chunk_size = int(chunk_size)
        self.attention_temperature = check_positive("attention_temperature", attention_temperature)
        self.last_aligned_fraction: float | None = None
        self._same_vocabulary = SameVocabulary(self.teacher.tokenizer)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        check_columns(
            type(self).__name__,
            len(sentence_features),
            2,
            "query, positive, optional negatives",
            "The word-level loss compares each query with its candidate passages.",
        )
        texts = decode_columns(self._student_tokenizers, sentence_features)
        blocks = self.teacher.attention(teacher_pairs(texts))
        with original_texts_hidden(sentence_features):
            outputs = embed_with_tokens(self.model, sentence_features)
        same_vocab = self._same_vocabulary(self._student_tokenizers, sentence_features)
        loss, targets = word_level_loss_from_outputs(
            outputs, texts, blocks, same_vocab, self.temperature, self.chunk_size, self.attention_temperature
        )
        self.last_aligned_fraction = targets.aligned_fraction
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "teacher": teacher_name(self.teacher),
            "teacher_layers": list(self.teacher.layers),
            "teacher_heads": "mean of all" if self.teacher.heads is None else list(self.teacher.heads),
            "temperature": self.temperature,
            "attention_temperature": self.attention_temperature,
            "chunk_size": self.chunk_size,
        }

    @property
    def citation(self) -> str:
        return MD2PR_CITATION
