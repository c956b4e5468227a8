"""The cross-encoder teacher: frozen logits t(q, d) and query-to-passage attention blocks.

MD2PR distils a cross-encoder (the ranker) into a dual-encoder (the retriever) at two levels: its
scores (sentence level) and its attention from query tokens to passage tokens (word level). This
module is the one place that runs the teacher. Everything it returns is detached: the teacher is
frozen, kept in eval mode and run under ``torch.no_grad``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from md2pr_st.utils import fingerprint

logger = logging.getLogger(__name__)

__all__ = ["AttentionBlock", "Teacher", "TeacherOutput"]

# Above this many pairs `score` shows a progress bar unless told otherwise.
_PROGRESS_BAR_THRESHOLD = 2048


@dataclass
class AttentionBlock:
    """The teacher's attention from the query tokens to the passage tokens of one (query, passage) pair.

    Attributes:
        weights: float32 tensor of shape ``(|q|, |d|)`` on the CPU: the attention of each query token (rows)
            over the passage tokens (columns), averaged over the chosen layers and heads, with special tokens and
            padding removed and each row renormalised to sum to 1 over the passage tokens.
        query_ids: teacher token ids of the query tokens (the rows), after truncation.
        passage_ids: teacher token ids of the passage tokens (the columns), after truncation.
        query_offsets: ``(start, end)`` character offsets of each row token in the query text.
        passage_offsets: ``(start, end)`` character offsets of each column token in the passage text.
    """

    weights: Tensor
    query_ids: list[int]
    passage_ids: list[int]
    query_offsets: list[tuple[int, int]]
    passage_offsets: list[tuple[int, int]]


@dataclass
class TeacherOutput:
    """Logits (shape ``(num_pairs,)``, float32, CPU) and, when asked for, one :class:`AttentionBlock` per pair."""

    scores: Tensor
    attention: list[AttentionBlock] | None = None


class Teacher(nn.Module):
    # score_candidates splits the pairs across launched processes (see md2pr_st.distributed)
    shard_across_processes = True

    def __init__(
        self,
        model: str | Path | Any,
        *,
        layers: Sequence[int] = (-1,),
        heads: Sequence[int] | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        device: str | None = None,
        num_labels: int | None = None,
        cache_scores: bool = True,
        autocast_dtype: str | None = None,
    ) -> None:
        """
        A frozen cross-encoder teacher that gives the logits t(q, d) of (query, passage) pairs and the
        query-to-passage attention block of each pair.

        Scores are raw logits (no sigmoid): the sentence-level loss and the false-negative rule work on the
        logit scale. The attention block of a pair is

            A = renorm_rows( mean_{l in layers, h in heads} softmax(Q_l,h K_l,h^T / sqrt(d_h))[q_tokens, d_tokens] )

        i.e. the rows of the query tokens and the columns of the passage tokens of the chosen layers' attention
        maps, averaged over the chosen layers and heads, special tokens ([CLS], [SEP], ...) and padding removed,
        and each row renormalised to sum to 1 over the passage tokens.

        The teacher is frozen (``requires_grad_(False)``), stays in eval mode even when a trainer calls
        ``.train()`` on the loss holding it, and runs under ``torch.no_grad``. Attention maps need the
        eager attention implementation (sdpa returns none); the teacher switches its model to eager the first
        time attention is asked for and stays there, so a teacher used only for scores (mining, filtering)
        keeps the faster default. Scores computed with :meth:`score` are cached in memory by a hash of the (query,
        passage) text, so repeated mining rounds (and epochs of a loss scoring online) do not rescore the same
        pairs; pass ``cache_scores=False`` or call :meth:`clear_cache` to bound that memory.

        Args:
            model: A ``CrossEncoder`` instance, or any Hub id or local folder that ``CrossEncoder`` loads.
                ``"minilm"`` and ``None``-like aliases resolve to the embedded all-MiniLM-L6-v2 backbone
                (a plain encoder: pass ``num_labels=1`` to give it a randomly initialised scoring head).
            layers: Which layers' attention to average (Python indices, default the last layer).
            heads: Which heads to average (default all).
            max_length: Maximum number of tokens of a (query, passage) pair; defaults to the cross-encoder's.
                Longer pairs are truncated longest-first.
            batch_size: Pairs per teacher forward pass.
            device: Device to load a model name on (ignored for an instance).
            num_labels: Passed to ``CrossEncoder`` when loading by name. Must give one logit per pair.
            cache_scores: Keep the scores of :meth:`score` in an in-memory cache keyed by the text hash.
            autocast_dtype: ``"bfloat16"`` runs the forward pass under ``torch.autocast`` (weights stay float32;
                logits and attention come back as float32): about 3x faster on CPUs with AMX and on GPUs, at the
                cost of bfloat16 rounding in the matrix products. ``None`` (default): full precision.

        References:
            - MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model, https://arxiv.org/abs/2312.16821

        Example:
            ::

                >>> import torch
                >>> from md2pr_st.teacher import Teacher
                >>> teacher = Teacher("cross-encoder/ms-marco-MiniLM-L6-v2")  # doctest: +SKIP
                >>> teacher.score([("what is python", "Python is a programming language.")])  # doctest: +SKIP
                array([7.91...], dtype=float32)
                >>> out = teacher.score_and_attend([("what is python", "Python is a programming language.")])  # doctest: +SKIP
                >>> out.attention[0].weights.sum(dim=1)  # doctest: +SKIP
                tensor([1., 1., 1.])
        """
        super().__init__()
        from sentence_transformers.cross_encoder.model import CrossEncoder

        if isinstance(model, CrossEncoder):
            cross_encoder = model
            self.model_name = str(getattr(cross_encoder.model.config, "_name_or_path", "") or type(model).__name__)
        elif isinstance(model, (str, Path)):
            from md2pr_st.models import check_cross_encoder, resolve_model_name

            name = resolve_model_name(model)
            if num_labels is None:  # with num_labels the caller asks for a fresh head on purpose
                check_cross_encoder(model)
            cross_encoder = CrossEncoder(name, device=device, num_labels=num_labels)
            self.model_name = str(model)
        else:
            raise TypeError(
                f"Teacher expects a sentence-transformers CrossEncoder, a Hub id or a local folder, got "
                f"{type(model).__name__}. Wrap your model with `CrossEncoder(...)` first."
            )
        if cross_encoder.num_labels != 1:
            raise ValueError(
                f"The teacher must give one logit per (query, passage) pair, but {self.model_name!r} has "
                f"num_labels={cross_encoder.num_labels}. Load a reranker with a single output, or pass num_labels=1 "
                "to put a fresh (random) scoring head on a plain encoder."
            )
        self.cross_encoder = cross_encoder
        self.cross_encoder.requires_grad_(False)
        super().train(False)
        self.tokenizer = cross_encoder.tokenizer
        config = cross_encoder.model.config
        self.num_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        self.num_heads = int(getattr(config, "num_attention_heads", 0) or 0)
        self.layers = self._check_indices(layers, self.num_layers, "layers", "num_hidden_layers")
        self.heads = (
            None if heads is None else self._check_indices(heads, self.num_heads, "heads", "num_attention_heads")
        )
        self.max_length = int(
            max_length or getattr(cross_encoder, "max_seq_length", None) or self.tokenizer.model_max_length
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.batch_size = batch_size
        self.cache_scores = cache_scores
        self.score_cache: dict[str, float] = {}
        if autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast_dtype must be None, 'bfloat16' or 'float16', got {autocast_dtype!r}.")
        self.autocast_dtype = autocast_dtype

    @staticmethod
    def _check_indices(values: Sequence[int], size: int, what: str, config_name: str) -> tuple[int, ...]:
        values = tuple(int(v) for v in values)
        if not values:
            raise ValueError(f"Teacher(..., {what}=...) must name at least one index, got an empty sequence.")
        if size:
            bad = [v for v in values if not -size <= v < size]
            if bad:
                raise ValueError(
                    f"Teacher(..., {what}={values}) is out of range: the teacher has {config_name}={size}, so valid "
                    f"indices are {-size}..{size - 1}."
                )
            return tuple(sorted({v % size for v in values}))
        return values

    # The teacher never trains: a trainer calling loss.train() must not switch its dropout on.
    def train(self, mode: bool = True) -> Teacher:
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return self.cross_encoder.device

    def clear_cache(self) -> None:
        """Forget all cached scores."""
        self.score_cache.clear()

    @staticmethod
    def pair_key(query: str, passage: str) -> str:
        """The cache key of a pair: sha256 of the length-prefixed query and passage texts."""
        return fingerprint([query, passage])

    # -- scores -----------------------------------------------------------------------------------------------

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Teacher logits t(q, d) for (query, passage) pairs, as a float32 numpy array of shape ``(len(pairs),)``.

        Pairs already scored by this teacher are read from the cache (keyed by a hash of the texts); the rest
        are scored in batches of similar length, with a progress bar for large jobs.
        """
        pairs = self._check_pairs(pairs)
        scores = np.empty(len(pairs), dtype=np.float32)
        todo: list[int] = []
        keys = [self.pair_key(q, d) for q, d in pairs] if self.cache_scores else []
        for i in range(len(pairs)):
            if self.cache_scores and keys[i] in self.score_cache:
                scores[i] = self.score_cache[keys[i]]
            else:
                todo.append(i)
        if todo:
            if show_progress_bar is None:
                show_progress_bar = len(todo) > _PROGRESS_BAR_THRESHOLD
            computed = self._run([pairs[i] for i in todo], batch_size, attention=False, progress=show_progress_bar)
            scores[todo] = computed.scores.numpy()
            if self.cache_scores:
                for i in todo:
                    self.score_cache[keys[i]] = float(scores[i])
        return scores

    def score_and_attend(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None) -> TeacherOutput:
        """Logits and attention blocks of (query, passage) pairs from one teacher forward pass per batch.

        Nothing is cached: the attention is large and used once, and a cached score would not save this forward
        pass (the attention needs it anyway), while caching every training pair would grow without bound.
        """
        pairs = self._check_pairs(pairs)
        return self._run(pairs, batch_size, attention=True, progress=False)

    def attention(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None) -> list[AttentionBlock]:
        """The :class:`AttentionBlock` of each (query, passage) pair."""
        return self.score_and_attend(pairs, batch_size).attention

    @staticmethod
    def _check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        pairs = list(pairs)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise TypeError(
                    f"Teacher expects a list of (query, passage) string pairs, but item {i} is {pair!r}. "
                    "Build the pairs as [(query, passage), ...]."
                )
        return pairs

    # -- the forward pass ---------------------------------------------------------------------------------------

    def _run(
        self, pairs: list[tuple[str, str]], batch_size: int | None, *, attention: bool, progress: bool
    ) -> TeacherOutput:
        batch_size = batch_size or self.batch_size
        scores = torch.empty(len(pairs), dtype=torch.float32)
        blocks: list[AttentionBlock | None] = [None] * len(pairs)
        # Sorting by length keeps padding (and wasted compute) low inside each batch.
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="Teacher", disable=not progress):
            index = order[start : start + batch_size]
            batch = [pairs[i] for i in index]
            batch_scores, batch_blocks = self._forward(batch, attention=attention)
            scores[index] = batch_scores
            if attention:
                for i, block in zip(index, batch_blocks):
                    blocks[i] = block
        return TeacherOutput(scores=scores, attention=blocks if attention else None)

    def _tokenize(self, pairs: list[tuple[str, str]], offsets: bool) -> Any:
        if offsets and not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"The teacher {self.model_name!r} has a slow (Python) tokenizer, which gives no character offsets, "
                "so its attention cannot be aligned with the student's tokens. Load it with a fast tokenizer "
                "(the default in transformers for almost every model)."
            )
        return self.tokenizer(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=offsets,
        )

    @contextmanager
    def _capture_attention(self, store: list[Tensor]) -> Iterator[None]:
        """Hook every attention module; keep the head-averaged maps of the chosen layers only.

        A wrapper module (e.g. ``BertAttention`` around ``BertSelfAttention``) hands on the very tensor its
        inner module returned, so consecutive outputs holding the same tensor count as one layer.
        """
        state: dict[str, Any] = {"last": None, "layer": 0}
        heads = None if self.heads is None else torch.tensor(self.heads)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not (isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], Tensor)):
                return
            weights = output[1]
            if weights.dim() != 4 or weights is state["last"]:
                return
            state["last"] = weights
            layer = state["layer"]
            state["layer"] += 1
            if layer in self.layers:
                if heads is not None:
                    weights = weights.index_select(1, heads.to(weights.device))
                store.append(weights.float().mean(dim=1))

        handles = [
            module.register_forward_hook(hook)
            for module in self.cross_encoder.model.modules()
            if "Attention" in type(module).__name__
        ]
        # Families outside transformers' AttentionInterface (DeBERTa-v2/v3, MPNet) return their attention weights
        # only when asked to, and the cross-encoder's forward does not ask: the config's default does.
        config = self.cross_encoder.model.config
        asked = config.output_attentions
        config.output_attentions = True
        try:
            yield
        finally:
            config.output_attentions = asked
            for handle in handles:
                handle.remove()
            if state["layer"] != self.num_layers:
                store.clear()
                raise RuntimeError(
                    f"The teacher {self.model_name!r} returned attention weights for {state['layer']} layers, but its "
                    f"config has num_hidden_layers={self.num_layers}. Its attention modules do not return their "
                    "weights in the eager implementation, so the word level (beta > 0) cannot use it; the sentence "
                    "level and the false-negative filter still can (beta=0). Families known to work: BERT, RoBERTa, "
                    "XLM-RoBERTa, ELECTRA, DeBERTa-v2/v3, MPNet, DistilBERT, ModernBERT."
                )

    def _use_eager_attention(self) -> None:
        hf_model = self.cross_encoder.model
        if hf_model.config._attn_implementation == "eager":
            return
        try:
            hf_model.set_attn_implementation("eager")
        except Exception as exc:  # pragma: no cover - depends on the architecture
            raise RuntimeError(
                f"Could not switch the teacher {self.model_name!r} to eager attention ({exc}). Load it with "
                "`CrossEncoder(name, model_kwargs={'attn_implementation': 'eager'})` and pass that instance."
            ) from exc
        if hf_model.config._attn_implementation != "eager":
            raise RuntimeError(
                f"The teacher {self.model_name!r} cannot use eager attention, which is needed for attention maps. "
                "Load it with `CrossEncoder(name, model_kwargs={'attn_implementation': 'eager'})`."
            )
        logger.info("Teacher %s switched to eager attention to return attention maps.", self.model_name)

    # no_grad rather than inference_mode: the results become loss targets, and inference tensors cannot be
    # saved for backward.
    @torch.no_grad()
    def _forward(self, pairs: list[tuple[str, str]], *, attention: bool) -> tuple[Tensor, list[AttentionBlock]]:
        self.cross_encoder.eval()
        encoding = self._tokenize(pairs, offsets=attention)
        offsets = encoding.pop("offset_mapping", None)
        features = {key: value.to(self.device) for key, value in encoding.items()}
        features["modality"] = "text"
        maps: list[Tensor] = []
        precision = torch.autocast(
            self.device.type, dtype=getattr(torch, self.autocast_dtype or "float32"), enabled=bool(self.autocast_dtype)
        )
        if attention:
            self._use_eager_attention()
            with self._capture_attention(maps), precision:
                out = self.cross_encoder(features)
        else:
            with precision:
                out = self.cross_encoder(features)
        scores = out["scores"].float().reshape(len(pairs), -1)[:, 0].cpu()
        if not attention:
            return scores, []
        averaged = torch.stack(maps).mean(dim=0).cpu()  # (batch, seq, seq)
        blocks = []
        for i in range(len(pairs)):
            sequence_ids = encoding.sequence_ids(i)
            query_pos = [k for k, s in enumerate(sequence_ids) if s == 0]
            passage_pos = [k for k, s in enumerate(sequence_ids) if s == 1]
            block = averaged[i][query_pos][:, passage_pos]
            denominator = block.sum(dim=1, keepdim=True)
            block = block / denominator.clamp_min(torch.finfo(block.dtype).tiny)
            ids = encoding["input_ids"][i].tolist()
            offs = offsets[i].tolist()
            blocks.append(
                AttentionBlock(
                    weights=block.clone(),
                    query_ids=[ids[k] for k in query_pos],
                    passage_ids=[ids[k] for k in passage_pos],
                    query_offsets=[tuple(offs[k]) for k in query_pos],
                    passage_offsets=[tuple(offs[k]) for k in passage_pos],
                )
            )
        if not all(math.isfinite(v) for v in scores.tolist()):
            logger.warning("The teacher %s produced non-finite logits for some pairs.", self.model_name)
        return scores, blocks

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "layers": list(self.layers),
            "heads": "mean of all" if self.heads is None else list(self.heads),
            "max_length": self.max_length,
            **({"autocast_dtype": self.autocast_dtype} if self.autocast_dtype else {}),
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config_dict().items())
