"""Recorded teacher attention: run the teacher once, in the false-negative pass, and train the word level without it.

The word level (L_w) needs the teacher's query-to-passage attention for every (query, candidate) pair of every
batch, and a round's false-negative filter already runs the teacher on exactly those pairs.
:class:`AttentionRecorder` is a scorer that runs the teacher with attention in that pass and stores compact targets;
:class:`OfflineTeacher` reads them back with what the losses use of a :class:`~md2pr_st.teacher.Teacher`.

A store is one folder: ``manifest.json`` (format; teacher name, weights fingerprint, layers, heads, max_length;
top_k; weights dtype; each shard's file, pair count, size and sha256), ``tokenizer/`` (the teacher's fast
tokenizer) and ``shard-00000.safetensors``, ... (per pair: key, logit, ``(|q|, |d|, k)``, crc32 of its tokens; flat:
each query row's k largest weights and, when k < |d|, their passage columns as uint16). Token ids and offsets are
not stored: they are what the teacher's tokenizer gives for the texts at ``max_length``, so the reader
re-tokenizes with the saved tokenizer and checks the crc32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from md2pr_st.teacher.attention_shards import (
    FIX,
    FORMAT,
    VERSION,
    AttentionStoreError,
    MissingPairsError,
    Store,
    check_same_teacher,
    pair_keys,
    teacher_entry,
    tokenize_pairs,
)
from md2pr_st.teacher.cross_encoder import AttentionBlock, Teacher, TeacherOutput
from md2pr_st.utils import atomic_path, write_json

__all__ = ["AttentionRecorder", "AttentionStoreError", "MissingPairsError", "OfflineTeacher"]


class AttentionRecorder:
    def __init__(
        self,
        teacher: Teacher | Any,
        path: str | Path,
        top_k: int | None = 16,
        *,
        weights_dtype: str = "float16",
        shard_size: int = 4096,
    ) -> None:
        """A scorer that records the teacher's attention while it scores: ``score(pairs)`` returns the teacher's
        logits ``t(q, d)`` as :meth:`Teacher.score` does, from one :meth:`Teacher.score_and_attend` pass, and stores
        each new pair's :class:`~md2pr_st.teacher.AttentionBlock` in the attention store at ``path``.

        Each row of a block (a query token's attention over the passage tokens) keeps its ``top_k`` largest
        weights in ``weights_dtype`` (the whole row when that takes no more bytes); ``top_k=None`` keeps all. Pairs
        are keyed by :meth:`Teacher.pair_key` (sha256 of the texts), written in shards of ``shard_size`` pairs (the
        memory bound), each shard and the manifest atomically. Pairs already in the store are not scored again:
        their recorded logits are returned. An existing store is appended to only by the same teacher (weights
        fingerprint, layers, heads, max_length) with the same ``top_k`` and ``weights_dtype``; anything else raises
        :class:`AttentionStoreError`.

        ``FalseNegativeFilter`` takes any scorer, so wrapping its teacher records the attention of every pair the
        round scores, in the pass that already scores them: ``MD2PRLoss(model, teacher=OfflineTeacher(path), beta=0.1)``
        then trains on those rows with no teacher forward.

        Args:
            teacher: a :class:`~md2pr_st.teacher.Teacher`, or anything it accepts (a ``CrossEncoder``, a Hub id or
                local folder).
            path: the store's folder (created when missing; an existing store is appended to).
            top_k: passage tokens kept per query token (None: all).
            weights_dtype: ``"float16"`` (default) or ``"float32"`` (then ``top_k=None`` reproduces the online
                targets to float precision).
            shard_size: pairs per teacher call and per shard file.

        Example:
            >>> import tempfile
            >>> from datasets import Dataset
            >>> from md2pr_st.false_negatives import FalseNegativeFilter
            >>> teacher = Teacher("minilm", num_labels=1, max_length=64)  # MiniLM with a random one-logit head
            >>> rows = Dataset.from_dict({"query": ["what is python"], "positive": ["Python is a language."],
            ...                           "negative_1": ["A snake."], "negative_2": ["Tea."]})
            >>> store = tempfile.mkdtemp()
            >>> scored = FalseNegativeFilter(AttentionRecorder(teacher, store), num_negatives=1).score(rows)
            >>> offline = OfflineTeacher(store)  # every pair the filter scored, with its logit and attention
            >>> len(offline), bool(np.allclose(offline.score([("what is python", "Tea.")]), scored["scores"][0][2]))
            (3, True)
        """
        self.teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be a positive integer or None (keep all), got {top_k!r}.")
        if weights_dtype not in ("float16", "float32"):
            raise ValueError(f"weights_dtype must be 'float16' or 'float32', got {weights_dtype!r}.")
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}.")
        self.top_k, self.shard_size, self.path = None if top_k is None else int(top_k), int(shard_size), Path(path)
        self.model_name, self.batch_size = self.teacher.model_name, self.teacher.batch_size  # the scorer interface
        entry = teacher_entry(self.teacher)
        self.fingerprint = entry["fingerprint"]
        if not (self.path / "manifest.json").is_file():
            if self.path.exists() and any(self.path.iterdir()):
                raise AttentionStoreError(f"{self.path} holds files but no manifest.json. Record into a new folder.")
            manifest = {"format": FORMAT, "version": VERSION, "teacher": entry, "top_k": self.top_k}
            manifest.update(weights_dtype=weights_dtype, tokenizer="tokenizer", shards=[])
            with atomic_path(self.path, is_dir=True) as tmp:
                self.teacher.tokenizer.save_pretrained(str(tmp / "tokenizer"))
                write_json(tmp / "manifest.json", manifest)
        self.store = Store(self.path)
        check_same_teacher(self.store, entry, top_k=self.top_k, weights_dtype=weights_dtype)

    def __len__(self) -> int:
        return len(self.store)

    def score(
        self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> np.ndarray:
        """Teacher logits of the pairs (float32, shape ``(len(pairs),)``); new pairs' attention goes to the store."""
        pairs = Teacher._check_pairs(pairs)
        keys = pair_keys(pairs)
        scores = np.empty(len(pairs), dtype=np.float32)
        found, shard, row = self.store.locate(keys)
        scores[found] = self.store.scores(shard[found], row[found])
        todo = np.flatnonzero(~found)
        _, first, inverse = np.unique(keys[todo], return_index=True, return_inverse=True)
        # Longest first, as the teacher itself sorts: chunks of similar length pad least.
        new = todo[first]
        new = new[np.argsort([-(len(pairs[i][0]) + len(pairs[i][1])) for i in new], kind="stable")]
        show = len(new) > self.shard_size if show_progress_bar is None else show_progress_bar
        for start in tqdm(range(0, len(new), self.shard_size), desc="Teacher (recording attention)", disable=not show):
            chunk = new[start : start + self.shard_size]
            output = self.teacher.score_and_attend([pairs[i] for i in chunk], batch_size)
            self.store.append(keys[chunk], output, self.top_k)
            scores[chunk] = output.scores.numpy()
        scores[todo] = scores[todo[first]][inverse.reshape(-1)]  # repeats of a new pair within this call
        return scores

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.teacher.get_config_dict(), "attention_store": str(self.path), "top_k": self.top_k}


class OfflineTeacher:
    def __init__(self, path: str | Path, teacher: Teacher | Any = None, *, verify: bool = False) -> None:
        """A teacher read from an attention store that :class:`AttentionRecorder` wrote: the recorded logits and
        attention blocks of (query, passage) pairs, with what the MD2PR losses use of a
        :class:`~md2pr_st.teacher.Teacher` (``score``, ``score_and_attend``, ``attention``, ``tokenizer``,
        ``layers``, ``heads``, ``max_length``, ``model_name``, ``batch_size``, ``get_config_dict``). Pass it as the
        ``teacher=`` of :class:`~md2pr_st.losses.MD2PRLoss` (or the other MD2PR losses).

        A block's weights are rebuilt dense, ``(|q|, |d|)`` float32, zeros outside each row's recorded top-k,
        each row renormalised to sum to 1; token ids and offsets come from the store's copy of the teacher's
        tokenizer. The shards stay memory-mapped; only an index of 32-byte keys sits in RAM. A pair the store does
        not hold raises :class:`MissingPairsError` (which pairs, and how to record them).

        Args:
            path: the store's folder.
            teacher: optional (a :class:`~md2pr_st.teacher.Teacher` or what it accepts); raise
                :class:`AttentionStoreError` unless the store was recorded with its weights, layers, heads and
                max_length.
            verify: check every shard's sha256 now (reads the whole store once).

        Example:
            >>> import tempfile
            >>> store = tempfile.mkdtemp()
            >>> pairs = [("what is python", "Python is a language."), ("what is python", "A snake.")]
            >>> logits = AttentionRecorder(Teacher("minilm", num_labels=1, max_length=64), store).score(pairs)
            >>> offline = OfflineTeacher(store)
            >>> bool(np.array_equal(offline.score(pairs), logits)), offline.layers, offline.max_length
            (True, (5,), 64)
            >>> block = offline.attention(pairs[1:])[0]  # [CLS] what is python [SEP] a snake . [SEP]
            >>> tuple(block.weights.shape), bool(torch.allclose(block.weights.sum(dim=1), torch.ones(3)))
            ((3, 3), True)
            >>> offline.score([("what is java", "A snake.")])
            Traceback (most recent call last):
            ...
            md2pr_st.teacher.attention_shards.MissingPairsError: 1 of 1 (query, passage) pairs are not in ...
        """
        self.path = Path(path)
        self._store = Store(self.path)
        if verify:
            self._store.verify()
        if teacher is not None:
            check_same_teacher(
                self._store, teacher_entry(teacher if isinstance(teacher, Teacher) else Teacher(teacher))
            )
        recorded, self.top_k = self._store.teacher, self._store.top_k
        self.model_name, self.fingerprint = recorded["model_name"], recorded["fingerprint"]
        self.layers = tuple(recorded["layers"])
        self.heads = None if recorded["heads"] is None else tuple(recorded["heads"])
        self.max_length, self.batch_size = int(recorded["max_length"]), int(recorded["batch_size"])
        self.autocast_dtype = recorded.get("autocast_dtype")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path / self._store.manifest["tokenizer"]))
        except (OSError, ValueError) as exc:
            raise AttentionStoreError(
                f"The attention store {self.path} has no readable tokenizer ({exc}). {FIX}"
            ) from exc
        if not getattr(self.tokenizer, "is_fast", False):  # a slow tokenizer gives no offsets to align with
            raise AttentionStoreError(f"The attention store {self.path} holds a slow tokenizer (no offsets). {FIX}")

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return bool(self._store.locate(pair_keys([pair]))[0][0])

    def missing(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs the store does not hold, in order."""
        found = self._store.locate(pair_keys(pairs))[0]
        return [pair for pair, ok in zip(pairs, found) if not ok]

    def _locate(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        found, shard, row = self._store.locate(pair_keys(pairs))
        if not found.all():
            missing = [pair for pair, ok in zip(pairs, found) if not ok]
            q, d = missing[0]
            raise MissingPairsError(
                f"{len(missing)} of {len(pairs)} (query, passage) pairs are not in the attention store {self.path} "
                f"(e.g. ({q[:60]!r}, {d[:60]!r})). It holds the pairs an AttentionRecorder scored, keyed by their "
                "exact texts: score these with it (`FalseNegativeFilter(AttentionRecorder(teacher, path))` over the "
                "rows you train on), or train with the online teacher (teacher= a Teacher or CrossEncoder). "
                "Texts that differ from the recorded ones only in case or a prompt mean the loss did not get the "
                "original texts (a collator that does not call the model's preprocess).",
                missing,
            )
        return shard, row

    def score(
        self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> np.ndarray:
        """The recorded logits ``t(q, d)`` of the pairs: float32, shape ``(len(pairs),)``."""
        pairs = Teacher._check_pairs(pairs)
        return self._store.scores(*self._locate(pairs))

    def score_and_attend(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None) -> TeacherOutput:
        """The recorded logits and :class:`~md2pr_st.teacher.AttentionBlock` of each pair (as
        :meth:`Teacher.score_and_attend` gives them, rows rebuilt from the stored top-k)."""
        pairs = Teacher._check_pairs(pairs)
        shard, row = self._locate(pairs)
        tokens = tokenize_pairs(self.tokenizer, pairs, self.max_length)
        blocks = [self._store.shards[s].block(int(r), t) for s, r, t in zip(shard, row, tokens)]
        return TeacherOutput(scores=torch.from_numpy(self._store.scores(shard, row)), attention=blocks)

    def attention(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None) -> list[AttentionBlock]:
        """The :class:`~md2pr_st.teacher.AttentionBlock` of each pair."""
        return self.score_and_attend(pairs, batch_size).attention

    def get_config_dict(self) -> dict[str, Any]:
        # The recorded teacher's settings, as Teacher reports them (this class has the same attributes)
        return {**Teacher.get_config_dict(self), "attention_store": str(self.path), "top_k": self.top_k}  # type: ignore[arg-type]
