from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from md2pr_st import _host
from md2pr_st.losses._shared import LossParts, cat_padded, original_texts_hidden
from md2pr_st.losses.md2pr import MD2PRLoss
from md2pr_st.teacher import Teacher


class CachedMD2PRLoss(MD2PRLoss, _host.CachedLossMixin):
    def __init__(
        self,
        model: Any,
        teacher: Teacher | Any | str | Path | None = None,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        :class:`MD2PRLoss` with GradCache (https://huggingface.co/papers/2101.06983): the same objective
        ``L = L_c + alpha * L_s + beta * L_w`` and false-negative masking, with the student run in mini-batches so
        that the batch size (and with it the number of in-batch negatives) is no longer bounded by activation
        memory.

        The three GradCache steps of the host's ``CachedLossMixin``: (1) embed every mini-batch without
        gradients; (2) compute the loss over the whole batch and back-propagate it to the cached outputs; (3)
        re-embed each mini-batch with gradients (replaying its dropout) and connect the cached gradients. For the
        word level, the cached output of a mini-batch is its sentence embeddings *and* its last-layer token
        embeddings (packed into one tensor per mini-batch), so step (2) sees everything the word-level loss needs.
        Memory: activations of one mini-batch at a time, plus the cached token embeddings of the whole batch
        (batch_size x (1 + n) x tokens x dim floats, e.g. 1 GB in fp32 for 1024 x 5 x 128 x 384); with ``beta=0``
        only the sentence embeddings are cached. The teacher runs on the whole batch once, without gradients (set
        its own ``batch_size`` to bound its memory).

        Args:
            model: The student SentenceTransformer.
            teacher: As for :class:`MD2PRLoss`.
            mini_batch_size: Rows per student mini-batch; only affects memory and speed, not the loss.
            mini_batch_num_tokens: Optional token budget per mini-batch instead of a fixed row count.
            show_progress_bar: Show a progress bar over the mini-batches.
            **kwargs: Every other :class:`MD2PRLoss` argument (alpha, beta, scale, temperatures,
                false_negative_margin, gather_across_devices, ...).

        References:
            - MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model, https://arxiv.org/abs/2312.16821
            - Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup (GradCache),
              https://huggingface.co/papers/2101.06983

        Requirements:
            Those of :class:`MD2PRLoss`.

        Inputs:
            +------------------------------------------------+--------------------------------------------------------------------------------+
            | Inputs                                         | Labels                                                                         |
            +================================================+================================================================================+
            | (query, positive, negative_1, ..., negative_n) | ``scores``: [t(q, positive), t(q, negative_1), ...], shape (batch_size, n + 1) |
            +------------------------------------------------+--------------------------------------------------------------------------------+
            | (query, positive, negative_1, ..., negative_n) | none: scored online by ``teacher``                                             |
            +------------------------------------------------+--------------------------------------------------------------------------------+

        Recommendations:
            - Use it for batch sizes whose activations do not fit with :class:`MD2PRLoss`; it is slower (two student
              forward passes).
            - Precompute the teacher scores; with ``beta > 0`` the teacher still runs online for its attention.

        Relations:
            - Gives the same loss and gradients as :class:`MD2PRLoss` (up to dropout draws and float rounding).
            - The MD2PR counterpart of CachedMultipleNegativesRankingLoss.

        Example:
            ::

                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from md2pr_st.losses import CachedMD2PRLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                loss = CachedMD2PRLoss(model, teacher="cross-encoder/ms-marco-MiniLM-L6-v2", mini_batch_size=32)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__(model, teacher=teacher, **kwargs)
        if int(mini_batch_size) < 1:
            raise ValueError(f"mini_batch_size must be a positive integer, got {mini_batch_size!r}.")
        self.mini_batch_size = int(mini_batch_size)
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        self.last_parts: dict[str, Tensor] = {}
        self._batch: tuple | None = None
        self._embedding_dim: int | None = None

    def embed_minibatch(
        self,
        sentence_feature: dict[str, Tensor],
        begin: int,
        end: int,
        with_grad: bool,
        copy_random_state: bool,
        random_state: Any = None,
    ) -> tuple[Tensor, Any]:
        """Embed a mini-batch; with beta > 0, pack ``[sentence_embedding | token_embeddings.flatten]`` per row."""
        grad_context = nullcontext if with_grad else torch.no_grad
        random_state_context = nullcontext() if random_state is None else random_state
        minibatch = _host.create_minibatch(sentence_feature, begin, end)
        with random_state_context:
            with grad_context():
                random_state = _host.RandContext(*minibatch.values()) if copy_random_state else None
                output = self.model(minibatch)
                reps = output["sentence_embedding"]
                self._embedding_dim = reps.shape[-1]
                if self.beta > 0:
                    tokens = output["token_embeddings"]
                    reps = torch.cat([reps, tokens.reshape(tokens.shape[0], -1).to(reps.dtype)], dim=1)
        return reps, random_state

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        dim = self._embedding_dim
        if self.beta > 0 and any((mb.shape[1] - dim) % dim or mb.shape[1] <= dim for column in reps for mb in column):
            raise ValueError(
                "CachedMD2PRLoss with beta > 0 caches each row's sentence and token embeddings side by side, and a "
                "wrapper that truncates the cached embeddings (MatryoshkaLoss) cuts the token embeddings away, which "
                "the word level needs. Wrap MD2PRLoss instead (MatryoshkaLoss(model, MD2PRLoss(...), dims)), or set "
                "beta=0 to wrap CachedMD2PRLoss."
            )
        teacher_scores, texts, blocks, features = self._batch
        outputs = []
        for minibatches in reps:
            output = {"sentence_embedding": torch.cat([mb[:, :dim] for mb in minibatches], dim=0)}
            if self.beta > 0:
                output["token_embeddings"] = cat_padded(
                    [mb[:, dim:].reshape(mb.shape[0], -1, dim) for mb in minibatches]
                )
            outputs.append(output)
        parts = self.compute_loss_from_outputs(outputs, teacher_scores, texts, blocks, features)
        total = torch.stack(list(parts.values())).sum()
        self.last_parts = {key: value.detach() for key, value in parts.items()}
        if with_backward:
            total.backward()
            total = total.detach()
        return total

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        sentence_features = list(sentence_features)
        teacher_scores, texts, blocks = self.prepare_teacher(sentence_features, labels)
        self._batch = (teacher_scores, texts, blocks, sentence_features)
        try:
            with original_texts_hidden(sentence_features):
                loss = self.forward_cached(sentence_features, labels)
        finally:
            self._batch = None
        # The gradient flows through `loss` (its hook runs GradCache step 3); the other parts are logged as constants
        # and the first part absorbs the difference, so the values still add up to the loss.
        parts = dict(self.last_parts)
        first, *rest = parts
        logged = {key: parts[key] for key in rest}
        return LossParts({first: loss - sum(logged.values(), torch.zeros_like(loss)), **logged})

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}
