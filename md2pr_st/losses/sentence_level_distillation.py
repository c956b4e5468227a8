from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.util import pairwise_cos_sim, similarity_fct_name
from torch import Tensor, nn

from md2pr_st import _host
from md2pr_st.citation import MD2PR_CITATION
from md2pr_st.losses._shared import (
    StudentTokenizers,
    as_teacher,
    check_columns,
    check_teacher_scores,
    check_teacher_target_scale,
    keep_original_texts,
    online_scores,
    original_texts_hidden,
    teacher_name,
)
from md2pr_st.teacher import Teacher
from md2pr_st.validation import check_positive


def sentence_level_kl(
    student_scores: Tensor, teacher_scores: Tensor, student_temperature: float, teacher_temperature: float
) -> Tensor:
    """Listwise KL divergence from the teacher's to the student's distribution over each candidate list.

    ``L_s = 1/B sum_b KL( softmax(t_b / T_t) || softmax(s_b / T_s) )``, with ``t_b`` and ``s_b`` the
    teacher and student scores of query b's candidates (shape ``(B, N)``) and ``KL(p || r) = sum_j p_j log(p_j / r_j)``.

    Example:
        >>> import math, torch
        >>> from md2pr_st.losses.sentence_level_distillation import sentence_level_kl
        >>> loss = sentence_level_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), 1.0, 1.0)
        >>> expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
        >>> round(loss.item(), 6) == round(expected, 6)
        True
    """
    student_log_probs = torch.log_softmax(student_scores.float() / student_temperature, dim=-1)
    teacher_probs = torch.softmax(teacher_scores.detach().float() / teacher_temperature, dim=-1)
    kl = torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs
    return kl.sum(dim=-1).mean()


class SentenceLevelDistillationLoss(nn.Module):
    def __init__(
        self,
        model: Any,
        teacher: Teacher | Any | str | Path | None = None,
        student_temperature: float = 0.05,
        teacher_temperature: float = 1.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = pairwise_cos_sim,
    ) -> None:
        """
        MD2PR's sentence-level distillation: the student's score distribution over each query's candidate list
        is pulled towards the cross-encoder teacher's, with a listwise KL divergence and separate temperatures.

        For a query q with candidates D_q = [d+, d1-, ..., dn-], student scores s(q, d) = sim(E(q), E(d)) and
        teacher logits t(q, d)::

            L_s = 1/B sum_q KL( softmax(t(q, D_q) / T_t) || softmax(s(q, D_q) / T_s) )

        There is no ``T_s^2`` factor: Hinton et al.'s ``T^2`` compensates a *softening* temperature ``T > 1``; at a
        retrieval temperature such as ``T_s = 0.05`` it would shrink the gradient twentyfold and switch L_s off next
        to a contrastive loss. The gradient with respect to a student score is
        ``(softmax(s / T_s) - softmax(t / T_t)) / T_s``, the same scale as InfoNCE's at ``scale = 1 / T_s``.

        Teacher scores come from the dataset's label column when there is one (offline, the sentence-transformers
        convention: a list of N scores per row, arriving as a (batch_size, N) tensor), and otherwise from the
        online ``teacher``, which scores the (query, candidate) texts as the user wrote them: the loss makes the
        student's ``preprocess`` pass the original texts on to it through the host's collator (case, punctuation,
        no prompt, not cut at the student's length). Features built without that (a custom collator) fall back to
        the texts decoded from the student's token ids.

        Args:
            model: The student SentenceTransformer.
            teacher: The cross-encoder teacher for online scores (a :class:`~md2pr_st.teacher.Teacher`, a
                ``CrossEncoder`` or a Hub id / local folder). Only used for batches without a label column.
            student_temperature: T_s. Cosine scores live in [-1, 1], so a small value (0.05 = scale 20, as in
                MultipleNegativesRankingLoss) gives the student a usable spread.
            teacher_temperature: T_t, on the teacher's logit scale. A float32 softmax underflows to exact zeros once
                a row's spread / T_t exceeds about 100 (checked on the first batch, with a warning).
            similarity_fct: Row-wise similarity of two (B, dim) tensors (default cosine).

        References:
            - MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model, https://arxiv.org/abs/2312.16821
            - Distilling the Knowledge in a Neural Network (temperature scaling), https://arxiv.org/abs/1503.02531

        Requirements:
            1. (query, positive, negative_1, ..., negative_n) examples, n >= 1
            2. Teacher scores for every (query, candidate) pair, as a list label or from an online teacher

        Inputs:
            +------------------------------------------------+--------------------------------------------------------------------------------+
            | Inputs                                         | Labels                                                                         |
            +================================================+================================================================================+
            | (query, positive, negative_1, ..., negative_n) | ``scores``: [t(q, positive), t(q, negative_1), ...], shape (batch_size, n + 1) |
            +------------------------------------------------+--------------------------------------------------------------------------------+
            | (query, positive, negative_1, ..., negative_n) | none: scored online by ``teacher``                                             |
            +------------------------------------------------+--------------------------------------------------------------------------------+

        Recommendations:
            - Precompute the teacher scores into a ``scores`` column once per mining round (``Teacher.score``
              caches by text) rather than scoring online every step.
            - Check the balance with a contrastive loss on your data (``benchmarks/loss_balance.py`` prints each
              part's gradient norm next to the contrastive one's) before changing ``alpha``.

        Relations:
            - :class:`~sentence_transformers.sentence_transformer.losses.DistillKLDivLoss` is the same KL with dot
              product scores and offline labels only; this loss adds the online cross-encoder teacher.
            - :class:`MD2PRLoss` combines this loss with a contrastive loss and :class:`WordLevelDistillationLoss`.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from md2pr_st.losses import SentenceLevelDistillationLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "query": ["what is python", "capital of france"],
                    "positive": ["Python is a programming language.", "Paris is the capital of France."],
                    "negative_1": ["The python is a snake.", "Lyon is a city in France."],
                    "scores": [[8.1, 2.3], [9.0, 1.2]],  # teacher logits t(q, positive), t(q, negative_1)
                })
                loss = SentenceLevelDistillationLoss(model)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        self.model = model
        self._student_tokenizers = StudentTokenizers(model)  # kept: a DDP wrapper replaces self.model
        self.teacher = as_teacher(teacher)
        if self.teacher is not None:
            keep_original_texts(model)  # the online teacher reads what the user wrote
        self.student_temperature = check_positive("student_temperature", student_temperature)
        self.teacher_temperature = check_positive("teacher_temperature", teacher_temperature)
        self.similarity_fct = similarity_fct
        self._checked_first_batch = False

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        sentence_features = list(sentence_features)
        check_columns(
            type(self).__name__,
            len(sentence_features),
            3,
            "query, positive, negative_1, ...",
            "A softmax over one candidate is constant, so the loss would be identically zero. Add negative columns.",
        )
        if labels is None or labels.numel() == 0:
            teacher_scores, _ = online_scores(
                self.teacher, self._student_tokenizers, sentence_features, type(self).__name__
            )
            source = "online teacher output"
        else:
            teacher_scores, source = labels, "label column"
        with original_texts_hidden(sentence_features):
            embeddings = _host.embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, teacher_scores, source)

    def compute_loss_from_embeddings(
        self, embeddings: list[Tensor], teacher_scores: Tensor, source: str = "label column"
    ) -> Tensor:
        query, candidates = embeddings[0], embeddings[1:]
        teacher_scores = teacher_scores.to(query.device)
        self.check_teacher_scores(teacher_scores, query.shape[0], len(candidates), source)
        student_scores = torch.stack([self.similarity_fct(query, c) for c in candidates], dim=1)
        return sentence_level_kl(student_scores, teacher_scores, self.student_temperature, self.teacher_temperature)

    def check_teacher_scores(self, scores: Tensor, batch_size: int, num_candidates: int, source: str) -> None:
        """Shape and NaN/inf on every batch (cheap on the CPU-side shape), underflow warning on the first."""
        name = type(self).__name__
        if tuple(scores.shape) != (batch_size, num_candidates) or not self._checked_first_batch:
            check_teacher_scores(name, scores, batch_size, num_candidates, source)
        if not self._checked_first_batch:
            self._checked_first_batch = True
            check_teacher_target_scale(name, scores, self.teacher_temperature)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "teacher": teacher_name(self.teacher),
            "student_temperature": self.student_temperature,
            "teacher_temperature": self.teacher_temperature,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
        }

    @property
    def citation(self) -> str:
        return MD2PR_CITATION
