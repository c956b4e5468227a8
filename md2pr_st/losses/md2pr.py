from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.util import all_gather_with_grad, cos_sim, get_rank, similarity_fct_name
from torch import Tensor, nn

from md2pr_st import _host
from md2pr_st.citation import MD2PR_CITATION
from md2pr_st.config import WORD_LEVEL_PAIRS
from md2pr_st.losses._shared import (
    LossParts,
    StudentTokenizers,
    as_teacher,
    check_columns,
    check_teacher_scores,
    check_teacher_target_scale,
    decode_columns,
    embed_with_tokens,
    keep_original_texts,
    original_texts_hidden,
    teacher_name,
    teacher_pairs,
)
from md2pr_st.losses.sentence_level_distillation import sentence_level_kl
from md2pr_st.losses.word_level_distillation import SameVocabulary, word_level_loss_from_outputs
from md2pr_st.teacher import Teacher
from md2pr_st.validation import check_choice, check_positive, check_weight

logger = logging.getLogger(__name__)


def check_word_level_teacher(beta: float, teacher: Any) -> None:
    """The word level (``beta > 0``) distils the teacher's attention, which only an online teacher gives: checked by
    :class:`MD2PRLoss` when it is built, and by :func:`~md2pr_st.student.train_student` before any work.

    Example:
        >>> check_word_level_teacher(0.5, None)
        Traceback (most recent call last):
        ...
        ValueError: MD2PRLoss with beta > 0 (word-level distillation) needs an online teacher for its attention: ...
    """
    if beta > 0 and teacher is None:
        raise ValueError(
            "MD2PRLoss with beta > 0 (word-level distillation) needs an online teacher for its attention: pass "
            "teacher= a CrossEncoder, a Hub id / local folder, or an md2pr_st.teacher.Teacher, or set beta=0."
        )


def false_negative_mask(teacher_scores: Tensor, margin: float | None, threshold: float | None = None) -> Tensor:
    """Flag the hard negatives the teacher scores like a positive:
    ``t(q, d) >= t(q, d+) - margin`` or ``t(q, d) >= threshold``.

    ``teacher_scores`` is (B, 1 + n) with the positive first; the result is a (B, 1 + n) bool mask whose first
    column (the positive itself) is always False. A criterion set to None is not used (both None: nothing flagged).
    These are the thresholds of :class:`~md2pr_st.false_negatives.FalseNegativeFilter`'s rules (its round
    statistics' ``margin`` and ``threshold``), so the loss masks what the filter flagged.

    Example:
        >>> import torch
        >>> from md2pr_st.losses.md2pr import false_negative_mask
        >>> false_negative_mask(torch.tensor([[5.0, 4.5, 1.0, 5.5]]), margin=1.0)
        tensor([[False,  True, False,  True]])
        >>> false_negative_mask(torch.tensor([[5.0, 4.5, 1.0, 5.5]]), margin=0.0, threshold=1.0)
        tensor([[False,  True,  True,  True]])
    """
    mask = torch.zeros_like(teacher_scores, dtype=torch.bool)
    if margin is not None:
        mask[:, 1:] |= teacher_scores[:, 1:] >= teacher_scores[:, :1] - margin
    if threshold is not None:
        mask[:, 1:] |= teacher_scores[:, 1:] >= threshold
    return mask


def masked_contrastive_loss(
    queries: Tensor,
    candidates: list[Tensor],
    flagged: Tensor,
    scale: float,
    similarity_fct: Callable[[Tensor, Tensor], Tensor],
    offset: int = 0,
) -> Tensor:
    """InfoNCE over in-batch and hard negatives, with flagged false negatives removed from the denominator.

    ``L_c = -1/B sum_i log( exp(s(q_i, d+_i) * scale) / sum_{d in C_i} exp(s(q_i, d) * scale) )`` where C_i holds
    every candidate of the (possibly gathered) batch except query i's own hard negatives flagged in ``flagged``.

    Args:
        queries: (B, dim) this device's query embeddings.
        candidates: 1 + n tensors of shape (W, dim): the positives, then each hard-negative column, of the whole
            (gathered) batch of W rows; this device's rows are ``offset .. offset + B``.
        flagged: (B, 1 + n) bool, query i's own candidates to drop (column 0, the positive, must be False).
        scale: 1 / tau.
        similarity_fct: (B, dim) x (W', dim) -> (B, W') similarity matrix.
        offset: index of this device's first row in the gathered batch.

    Example:
        >>> import math, torch
        >>> from sentence_transformers.util import dot_score
        >>> from md2pr_st.losses.md2pr import masked_contrastive_loss
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
        >>> loss = masked_contrastive_loss(q, [pos, neg], torch.tensor([[False, False]]), 1.0, dot_score)
        >>> round(loss.item(), 6) == round(-math.log(math.e / (math.e + math.e**2)), 6)
        True
        >>> masked_contrastive_loss(q, [pos, neg], torch.tensor([[False, True]]), 1.0, dot_score).item()
        0.0
    """
    batch, world = queries.shape[0], candidates[0].shape[0]
    scores = similarity_fct(queries, torch.cat(candidates, dim=0)) * scale  # (B, (1 + n) * W)
    rows = torch.arange(batch, device=scores.device)
    if flagged.any():
        drop = torch.zeros_like(scores, dtype=torch.bool)
        for c in range(1, len(candidates)):
            drop[rows, c * world + offset + rows] = flagged[:, c].to(scores.device)
        scores = scores.masked_fill(drop, float("-inf"))
    return F.cross_entropy(scores, rows + offset)


class MD2PRLoss(nn.Module):
    def __init__(
        self,
        model: Any,
        teacher: Teacher | Any | str | Path | None = None,
        alpha: float = 1.0,
        beta: float = 0.0,
        scale: float = 20.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        student_temperature: float = 0.05,
        teacher_temperature: float = 1.0,
        word_temperature: float = 0.05,
        attention_temperature: float = 0.4,
        false_negative_margin: float | None = 0.0,
        false_negative_threshold: float | None = None,
        gather_across_devices: bool = False,
        word_level_chunk_size: int = 64,
        word_level_pairs: str = "all",
    ) -> None:
        """
        The MD2PR objective: a contrastive loss over in-batch and hard negatives with the teacher's false negatives
        masked out, plus sentence-level (scores) and word-level (attention) distillation from a cross-encoder::

            L = L_c + alpha * L_s + beta * L_w

            L_c = -1/B sum_q log( exp(s(q, d+) * scale) / sum_{d in batch ∪ D_q, d not flagged} exp(s(q, d) * scale) )
            L_s = 1/B sum_q KL( softmax(t(q, D_q) / T_t) || softmax(s(q, D_q) / T_s) )
            L_w = mean_pairs mean_i KL( A_i || softmax_j(<h^q_i, h^d_j> / tau_w) )

        with D_q = [d+, d1-, ..., dn-] the query's own candidates, s the student similarity (cosine by default),
        t the teacher's logits and A its query-to-passage attention (see :class:`SentenceLevelDistillationLoss` and
        :class:`WordLevelDistillationLoss` for L_s and L_w).

        False negatives: a hard negative d of query q is flagged when the teacher scores it within the margin of the
        positive, ``t(q, d) >= t(q, d+) - false_negative_margin``, or above ``false_negative_threshold``; flagged candidates are removed from L_c's
        denominator (never treated as negatives) and stay in L_s's candidate list, where the teacher's high score
        teaches the student to rank them high. Only a query's own hard negatives carry teacher scores, so in-batch
        negatives (other queries' candidates) are never flagged; use ``BatchSamplers.NO_DUPLICATES`` against
        duplicate texts. Margin and threshold are usually re-estimated per mining round by the false-negative filter. The
        fraction of hard negatives masked in the last batch is ``loss.last_masked_fraction`` (and the running
        totals ``loss.masked_counts``).

        Teacher scores come from the label column when the dataset has one (offline, a list of 1 + n scores per
        row), otherwise from the online ``teacher``. The teacher also gives the attention for L_w (always online).
        The forward returns a dict (``contrastive``, ``sentence_level``, ``word_level``, already weighted), so the
        trainer logs each part; their sum is the loss.

        Args:
            model: The student SentenceTransformer (a shared encoder, or separate query/document towers via a
                ``Router``).
            teacher: The cross-encoder teacher: a :class:`~md2pr_st.teacher.Teacher` (choose attention layers and
                heads there), a ``CrossEncoder`` or a Hub id / local folder. Needed when ``beta > 0`` or when the
                dataset has no label column.
            alpha: Weight of L_s (0 switches it off).
            beta: Weight of L_w (0, the default, switches it off, and the teacher's attention is not computed).
                Off by default because on RAG24 every weight tried lowered dev nDCG@10 (1: -0.148, 0.1: -0.009,
                paired over 37 dev topics; BENCHMARKS.md): turn it on (e.g. 0.1) with a teacher far stronger than
                the student, and check the balance with ``benchmarks/loss_balance.py``.
            scale: 1 / tau of the contrastive softmax (20 = temperature 0.05, as MultipleNegativesRankingLoss).
            similarity_fct: Student similarity of two embedding matrices, (B, dim) x (M, dim) -> (B, M). Default
                cosine (``sentence_transformers.util.cos_sim``).
            student_temperature: T_s of L_s.
            teacher_temperature: T_t of L_s, on the teacher's logit scale.
            word_temperature: tau_w of L_w.
            attention_temperature: T_a of L_w: the teacher's attention rows become ``A^(1 / T_a)`` renormalised.
            false_negative_margin: m in ``t(q, d) >= t(q, d+) - m`` (logit units). None: no margin criterion.
            false_negative_threshold: tau in ``t(q, d) >= tau`` (logit units). None (default): no threshold
                criterion. Both None disable the masking.
            gather_across_devices: Gather queries and candidates from all processes (with gradients) so every
                device's queries see every device's candidates as in-batch negatives, as in
                MultipleNegativesRankingLoss.
            word_level_chunk_size: Pairs per chunk of the word-level interaction maps.
            word_level_pairs: The pairs L_w averages over: ``"all"`` (each query with its positive and every hard
                negative) or ``"positives"`` (each query with its positive only: the teacher's attention where it
                reads a relevant passage; its attention is then computed for those pairs only).

        References:
            - MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model, https://arxiv.org/abs/2312.16821
            - Representation Learning with Contrastive Predictive Coding (InfoNCE), https://arxiv.org/abs/1807.03748

        Requirements:
            1. (query, positive) pairs or (query, positive, negative_1, ..., negative_n) tuples; L_s needs n >= 1
            2. Teacher scores of every (query, candidate) pair as a list label, or an online teacher
            3. An online teacher whenever beta > 0

        Inputs:
            +------------------------------------------------+--------------------------------------------------------------------------------+
            | Inputs                                         | Labels                                                                         |
            +================================================+================================================================================+
            | (query, positive, negative_1, ..., negative_n) | ``scores``: [t(q, positive), t(q, negative_1), ...], shape (batch_size, n + 1) |
            +------------------------------------------------+--------------------------------------------------------------------------------+
            | (query, positive, negative_1, ..., negative_n) | none: scored online by ``teacher``                                             |
            +------------------------------------------------+--------------------------------------------------------------------------------+
            | (query, positive)                              | none, with ``alpha=0`` (L_c + beta * L_w)                                      |
            +------------------------------------------------+--------------------------------------------------------------------------------+

        Recommendations:
            - Use ``BatchSamplers.NO_DUPLICATES`` so that in-batch negatives are never copies of a positive.
            - Precompute teacher scores into a ``scores`` column per mining round; the teacher then only runs for
              the attention of L_w.
            - L_s has no T_s^2 factor, so at T_s = 0.05 its gradient is on the scale of L_c's and ``alpha = 1``
              weighs the two alike; ``benchmarks/loss_balance.py`` measures the balance on your data.

        Relations:
            - With ``alpha=0, beta=0, false_negative_margin=None`` this is MultipleNegativesRankingLoss with
              cosine similarity and the same scale.
            - :class:`SentenceLevelDistillationLoss` and :class:`WordLevelDistillationLoss` are L_s and L_w alone.
            - :class:`CachedMD2PRLoss` is this loss with GradCache, for batches whose activations do not fit.
            - Like GISTEmbedLoss it uses a second model to remove false negatives, but it uses a cross-encoder and
              only masks the query's own hard negatives.

        Example:
            Switching an existing MultipleNegativesRankingLoss script to MD2PR changes only the loss line::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
                from sentence_transformers.base.sampler import BatchSamplers
                from md2pr_st.losses import MD2PRLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "query": ["what is python", "capital of france"],
                    "positive": ["Python is a programming language.", "Paris is the capital of France."],
                    "negative_1": ["The python is a snake.", "Lyon is a city in France."],
                })
                # loss = MultipleNegativesRankingLoss(model)
                loss = MD2PRLoss(model, teacher="cross-encoder/ms-marco-MiniLM-L6-v2")
                args = SentenceTransformerTrainingArguments("out", batch_sampler=BatchSamplers.NO_DUPLICATES)
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()
                model.save("md2pr-minilm")  # loads with SentenceTransformer("md2pr-minilm"), no md2pr_st needed
        """
        super().__init__()

        self.model = model
        self._student_tokenizers = StudentTokenizers(model)  # kept: a DDP wrapper replaces self.model
        self.teacher = as_teacher(teacher)
        if self.teacher is not None:
            keep_original_texts(model)  # the online teacher reads what the user wrote, not the student's decoding
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.scale = check_positive("scale", scale)
        self.similarity_fct = similarity_fct or cos_sim
        self.student_temperature = check_positive("student_temperature", student_temperature)
        self.teacher_temperature = check_positive("teacher_temperature", teacher_temperature)
        self.word_temperature = check_positive("word_temperature", word_temperature)
        self.attention_temperature = check_positive("attention_temperature", attention_temperature)
        if false_negative_margin is not None:
            false_negative_margin = float(false_negative_margin)
        self.false_negative_margin = false_negative_margin
        self.false_negative_threshold = None if false_negative_threshold is None else float(false_negative_threshold)
        self.gather_across_devices = gather_across_devices
        check_word_level_teacher(self.beta, self.teacher)
        if int(word_level_chunk_size) < 1:
            raise ValueError(f"word_level_chunk_size must be a positive integer, got {word_level_chunk_size!r}.")
        self.word_level_chunk_size = int(word_level_chunk_size)
        check_choice("word_level_pairs", word_level_pairs, WORD_LEVEL_PAIRS)
        self.word_level_pairs = word_level_pairs
        # Which student tokenizers share the teacher's vocabulary (a plain object: no module, no parameters).
        self._same_vocabulary = SameVocabulary(self.teacher.tokenizer) if self.beta > 0 else None
        self.last_aligned_fraction: float | None = None
        self.last_masked_fraction: float | None = None
        self.masked_counts = {"flagged": 0, "hard_negatives": 0}
        self._checked_first_batch = False

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        sentence_features = list(sentence_features)
        teacher_scores, texts, blocks = self.prepare_teacher(sentence_features, labels)
        with original_texts_hidden(sentence_features):
            if self.beta > 0:
                outputs = embed_with_tokens(self.model, sentence_features)
            else:
                outputs = [{"sentence_embedding": e} for e in _host.embed_columns(self.model, sentence_features)]
        return self.compute_loss_from_outputs(outputs, teacher_scores, texts, blocks, sentence_features)

    def prepare_teacher(
        self, sentence_features: list[dict[str, Tensor]], labels: Tensor | None
    ) -> tuple[Tensor | None, list | None, list | None]:
        """Input checks, then the teacher's side of a batch: scores (B, 1 + n) from the labels or online, and for the
        word level the texts the teacher read and its attention blocks (row-major pairs)."""
        name = type(self).__name__
        check_columns(
            name,
            len(sentence_features),
            2,
            "query, positive, optional negative_1..n",
            "Add a positive column (and hard negatives).",
        )
        num_candidates = len(sentence_features) - 1
        if self.alpha > 0 and num_candidates < 2:
            raise ValueError(
                f"{name} with alpha > 0 needs hard negatives: the sentence-level loss is a softmax over each query's "
                f"candidates, and with only (query, positive) columns it is constant. Add negative_1..n columns or set "
                "alpha=0."
            )
        has_labels = labels is not None and labels.numel() > 0
        need_scores = (
            self.alpha > 0 or self.false_negative_margin is not None or self.false_negative_threshold is not None
        )
        texts = blocks = None
        teacher_scores = labels if has_labels else None
        if self.beta > 0 or (need_scores and not has_labels):
            if self.teacher is None:
                raise ValueError(
                    f"{name} got no label column and no teacher, so it has no teacher scores for the sentence-level "
                    "loss and the false-negative rule. Add a `scores` column with one teacher score per candidate "
                    "column, or pass teacher=..., or set alpha=0 and false_negative_margin=None."
                )
            texts = decode_columns(self._student_tokenizers, sentence_features)
            pairs = teacher_pairs(texts)
            online = None
            if self.beta > 0 and self.word_level_pairs == "positives":
                blocks = self.teacher.attention(teacher_pairs(texts[:2]))
            elif self.beta > 0:
                output = self.teacher.score_and_attend(pairs)
                blocks, online = output.attention, output.scores
            if teacher_scores is None and online is None and need_scores:
                online = torch.as_tensor(self.teacher.score(pairs, show_progress_bar=False))
            if teacher_scores is None and online is not None:
                teacher_scores = online.reshape(len(texts[0]), num_candidates)
        if teacher_scores is not None:
            batch = _host.batch_size(sentence_features[0])
            teacher_scores = teacher_scores.float()
            source = "label column" if has_labels else "online teacher output"
            if not self._checked_first_batch or tuple(teacher_scores.shape) != (batch, num_candidates):
                check_teacher_scores(name, teacher_scores, batch, num_candidates, source)
            if not self._checked_first_batch and self.alpha > 0:
                check_teacher_target_scale(name, teacher_scores, self.teacher_temperature)
        self._checked_first_batch = True
        return teacher_scores, texts, blocks

    def compute_loss_from_outputs(
        self,
        outputs: list[dict[str, Tensor]],
        teacher_scores: Tensor | None,
        texts: list | None,
        blocks: list | None,
        sentence_features: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The weighted parts from the student outputs (per column: ``sentence_embedding``, and ``token_embeddings``
        when beta > 0) and the teacher's side from :meth:`prepare_teacher`."""
        embeddings = [out["sentence_embedding"] for out in outputs]
        query = embeddings[0]
        batch, num_candidates = query.shape[0], len(embeddings) - 1
        if teacher_scores is not None:
            teacher_scores = teacher_scores.to(query.device)
        losses = LossParts()
        flagged = (
            false_negative_mask(teacher_scores, self.false_negative_margin, self.false_negative_threshold)
            if teacher_scores is not None
            else torch.zeros(batch, num_candidates, dtype=torch.bool, device=query.device)
        )
        self._record_masking(flagged)
        losses["contrastive"] = self._contrastive(query, embeddings[1:], flagged)
        if self.alpha > 0:
            # s(q, d) for the query's own candidates: the diagonal of each column's similarity matrix.
            student_scores = torch.stack([self.similarity_fct(query, c).diagonal() for c in embeddings[1:]], dim=1)
            losses["sentence_level"] = self.alpha * sentence_level_kl(
                student_scores, teacher_scores, self.student_temperature, self.teacher_temperature
            )
        if self.beta > 0:
            columns = 2 if self.word_level_pairs == "positives" else len(outputs)
            word_loss, targets = word_level_loss_from_outputs(
                outputs[:columns],
                texts[:columns],
                blocks,
                self._same_vocabulary(self._student_tokenizers, sentence_features),
                self.word_temperature,
                self.word_level_chunk_size,
                self.attention_temperature,
            )
            self.last_aligned_fraction = targets.aligned_fraction
            losses["word_level"] = self.beta * word_loss
        return losses

    def _contrastive(self, query: Tensor, candidates: list[Tensor], flagged: Tensor) -> Tensor:
        offset = 0
        if self.gather_across_devices:
            batch = query.shape[0]
            candidates = [all_gather_with_grad(c) for c in candidates]
            offset = get_rank() * batch
        return masked_contrastive_loss(query, candidates, flagged, self.scale, self.similarity_fct, offset)

    def _record_masking(self, flagged: Tensor) -> None:
        hard = flagged[:, 1:]
        count, total = int(hard.sum()), hard.numel()
        self.masked_counts["flagged"] += count
        self.masked_counts["hard_negatives"] += total
        self.last_masked_fraction = count / total if total else 0.0

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "teacher": teacher_name(self.teacher),
            "alpha": self.alpha,
            "beta": self.beta,
            "scale": self.scale,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
            "student_temperature": self.student_temperature,
            "teacher_temperature": self.teacher_temperature,
            "word_temperature": self.word_temperature,
            "attention_temperature": self.attention_temperature,
            "false_negative_margin": self.false_negative_margin,
            "false_negative_threshold": self.false_negative_threshold,
            "gather_across_devices": self.gather_across_devices,
            "word_level_pairs": self.word_level_pairs,
        }
        if self.teacher is not None:
            config["teacher_layers"] = list(self.teacher.layers)
            config["teacher_heads"] = "mean of all" if self.teacher.heads is None else list(self.teacher.heads)
        return config

    @property
    def citation(self) -> str:
        return MD2PR_CITATION
