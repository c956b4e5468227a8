"""The on-disk format of a recorded-attention store (see :mod:`md2pr_st.teacher.attention_store`): safetensors shards
of compact per-pair targets, a manifest with the teacher's fingerprint and each shard's checksum, and the checks that
refuse a store recorded with another teacher or left incomplete."""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

from md2pr_st.teacher.cross_encoder import AttentionBlock, Teacher, TeacherOutput
from md2pr_st.utils import atomic_path, fingerprint, sha256_file, write_json

FORMAT, VERSION = "md2pr-attention-store", 1
DTYPES = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "I32": np.int32, "F16": np.float16, "F32": np.float32}
FIX = "Record the store again (AttentionRecorder into an empty folder), or train with the online teacher."


class AttentionStoreError(ValueError):
    """An attention store that cannot be used: missing, partial, corrupt, or recorded with another teacher."""


class MissingPairsError(LookupError):
    """(query, passage) pairs asked of an :class:`OfflineTeacher` whose store does not hold them (see ``.pairs``)."""

    def __init__(self, message: str, pairs: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.pairs = pairs


def pair_keys(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The pairs' :meth:`Teacher.pair_key` as raw 32-byte digests (numpy ``S32``, sortable and compact)."""
    return np.array([bytes.fromhex(Teacher.pair_key(q, d)) for q, d in pairs], dtype="S32").reshape(len(pairs))


def token_checksum(
    query_ids: Sequence[int], passage_ids: Sequence[int], query_offsets: Any, passage_offsets: Any
) -> int:
    """crc32 of a block's token ids and offsets: what the reader's re-tokenization must give back."""
    crc = 0
    for part in (query_ids, passage_ids, query_offsets, passage_offsets):
        crc = zlib.crc32(np.asarray(part, dtype=np.int64).tobytes(), crc)
    return crc


def tokenize_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[tuple[list, list, list, list]]:
    """(query ids, passage ids, query offsets, passage offsets) of each pair, tokenized as the teacher does
    (longest-first truncation at ``max_length``; padding changes none of them)."""
    if not pairs:
        return []
    texts = ([q for q, _ in pairs], [d for _, d in pairs])
    encoding = tokenizer(*texts, truncation="longest_first", max_length=max_length, return_offsets_mapping=True)
    out = []
    for i in range(len(pairs)):
        ids, offsets, sides = encoding["input_ids"][i], encoding["offset_mapping"][i], encoding.sequence_ids(i)
        q, d = ([k for k, s in enumerate(sides) if s == side] for side in (0, 1))
        out.append(
            ([ids[k] for k in q], [ids[k] for k in d], [tuple(offsets[k]) for k in q], [tuple(offsets[k]) for k in d])
        )
    return out


def compact(block: AttentionBlock, top_k: int | None, dtype: np.dtype) -> tuple:
    """((|q|, |d|, k), token checksum, each row's k largest weights, their columns); all columns, and no column
    indices, when k = |d|."""
    weights = block.weights.numpy()
    nq, nd = weights.shape
    k = nd if top_k is None else min(top_k, nd)
    if k * (dtype.itemsize + 2) >= nd * dtype.itemsize:  # the top k and their uint16 columns are no smaller: keep all
        k = nd
    checksum = token_checksum(block.query_ids, block.passage_ids, block.query_offsets, block.passage_offsets)
    if k == nd:
        return (nq, nd, k), checksum, weights.astype(dtype).ravel(), np.empty(0, np.uint16)
    columns = np.sort(np.argpartition(-weights, k - 1, axis=1)[:, :k], axis=1)
    values = np.take_along_axis(weights, columns, axis=1)
    return (nq, nd, k), checksum, values.astype(dtype).ravel(), columns.astype(np.uint16).ravel()


class Shard:
    """One shard file, memory-mapped: arrays are views into the file, read by the OS page by page."""

    def __init__(self, path: Path, entry: dict[str, Any]) -> None:
        if not path.is_file():
            raise AttentionStoreError(f"The attention store's shard {path} is missing (the store is partial). {FIX}")
        if path.stat().st_size != entry["bytes"]:
            raise AttentionStoreError(
                f"The attention store's shard {path} has {path.stat().st_size} bytes but the manifest records "
                f"{entry['bytes']}: it is truncated or was changed. {FIX}"
            )
        try:
            raw = np.memmap(path, dtype=np.uint8, mode="r")
            size = int.from_bytes(raw[:8].tobytes(), "little")
            header = json.loads(raw[8 : 8 + size].tobytes())
            arrays = {}
            for name, info in header.items():
                if name != "__metadata__":
                    begin, end = (8 + size + offset for offset in info["data_offsets"])
                    arrays[name] = raw[begin:end].view(DTYPES[info["dtype"]]).reshape(info["shape"])
            self.keys = arrays["keys"].reshape(-1, 32).view("S32").reshape(-1)
            self.scores, self.shape, self.checksum = arrays["scores"], arrays["shape"], arrays["checksum"]
            self.weights, self.indices = arrays["weights"], arrays["indices"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise AttentionStoreError(f"The attention store's shard {path} is corrupt ({exc!r}). {FIX}") from exc
        nq, nd, k = (self.shape[:, i].astype(np.int64) for i in range(3))
        entries, sparse = nq * k, np.where(k < nd, nq * k, 0)
        self.weight_start = np.concatenate([[0], np.cumsum(entries)])
        self.index_start = np.concatenate([[0], np.cumsum(sparse)])
        n = entry["pairs"]
        lengths = {len(self.keys), len(self.scores), len(self.checksum), len(self.shape), n}
        if len(lengths) > 1 or (self.weight_start[-1], self.index_start[-1]) != (len(self.weights), len(self.indices)):
            raise AttentionStoreError(f"The attention store's shard {path} does not hold its {n} pairs. {FIX}")

    def block(self, row: int, tokens: tuple[list, list, list, list]) -> AttentionBlock:
        nq, nd, k = (int(v) for v in self.shape[row])
        if (len(tokens[0]), len(tokens[1])) != (nq, nd) or token_checksum(*tokens) != int(self.checksum[row]):
            raise AttentionStoreError(
                "The store's tokenizer does not give back the teacher's tokens of a recorded pair (its tokenizer "
                f"files were changed, or another transformers/tokenizers version splits differently). {FIX}"
            )
        start = self.weight_start[row]
        values = np.asarray(self.weights[start : start + nq * k], dtype=np.float32).reshape(nq, k)
        if k == nd:
            dense = values.copy()
        else:
            dense = np.zeros((nq, nd), dtype=np.float32)
            columns = np.asarray(self.indices[self.index_start[row] : self.index_start[row] + nq * k], dtype=np.int64)
            np.put_along_axis(dense, columns.reshape(nq, k), values, axis=1)
        dense /= np.maximum(dense.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
        return AttentionBlock(torch.from_numpy(dense), tokens[0], tokens[1], tokens[2], tokens[3])


class Store:
    """The manifest, the shards, and a sorted index from pair key to (shard, row)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise AttentionStoreError(
                f"{path} is not an attention store (no manifest.json). Record one with "
                "`FalseNegativeFilter(AttentionRecorder(teacher, path)).score(dataset)`, or pass the store's folder."
            )
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
                raise ValueError(f"format {self.manifest.get('format')!r} version {self.manifest.get('version')!r}")
            self.teacher, self.top_k = self.manifest["teacher"], self.manifest["top_k"]
            self.dtype = np.dtype(self.manifest["weights_dtype"])
            entries = list(self.manifest["shards"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AttentionStoreError(
                f"{manifest_path} is not a readable {FORMAT} v{VERSION} manifest ({exc}). {FIX}"
            ) from exc
        self.shards = [Shard(path / entry["file"], entry) for entry in entries]
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return sum(len(shard.keys) for shard in self.shards)

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, shard, row) of each key; shard and row are meaningful where found."""
        if len(self) == 0:
            return np.zeros(len(keys), bool), np.zeros(len(keys), np.int32), np.zeros(len(keys), np.int64)
        if self._index is None:  # built once per change: one sort of 32-byte keys, no Python object per pair
            all_keys = np.concatenate([s.keys for s in self.shards])
            shard = np.concatenate([np.full(len(s.keys), i, np.int32) for i, s in enumerate(self.shards)])
            row = np.concatenate([np.arange(len(s.keys), dtype=np.int64) for s in self.shards])
            order = np.argsort(all_keys, kind="stable")
            self._index = (all_keys[order], shard[order], row[order])
        sorted_keys, shard, row = self._index
        position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return sorted_keys[position] == keys, shard[position], row[position]

    def scores(self, shard: np.ndarray, row: np.ndarray) -> np.ndarray:
        out = np.empty(len(shard), dtype=np.float32)
        for s in np.unique(shard):
            at = shard == s
            out[at] = self.shards[s].scores[row[at]]
        return out

    def append(self, keys: np.ndarray, output: TeacherOutput, top_k: int | None) -> None:
        """Write one shard of recorded pairs, then the manifest that lists it (each atomically: a crash leaves the
        store as it was, at worst with an unlisted shard file that the next shard overwrites)."""
        shapes, checksums, weights, indices = zip(*(compact(b, top_k, self.dtype) for b in output.attention))
        if max(nd for _, nd, _ in shapes) > np.iinfo(np.uint16).max:
            raise AttentionStoreError("A passage has over 65535 teacher tokens; the store indexes columns as uint16.")
        arrays = {
            "keys": np.frombuffer(keys.tobytes(), dtype=np.uint8).reshape(len(keys), 32),
            "scores": output.scores.numpy().astype(np.float32),
            "shape": np.array(shapes, dtype=np.int32).reshape(-1, 3),
            "checksum": np.array(checksums, dtype=np.uint32),
            "weights": np.concatenate(weights).astype(self.dtype),
            "indices": np.concatenate(indices).astype(np.uint16),
        }
        name = f"shard-{len(self.shards):05d}.safetensors"
        with atomic_path(self.path / name) as tmp:
            save_file(arrays, str(tmp))
            entry = {"file": name, "pairs": len(keys), "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        self.manifest["shards"].append(entry)
        write_json(self.path / "manifest.json", self.manifest)
        self.shards.append(Shard(self.path / name, entry))
        self._index = None

    def verify(self) -> None:
        for entry in self.manifest["shards"]:
            if sha256_file(self.path / entry["file"]) != entry["sha256"]:
                raise AttentionStoreError(
                    f"The attention store's shard {self.path / entry['file']} fails its sha256 check. {FIX}"
                )


def teacher_entry(teacher: Teacher) -> dict[str, Any]:
    """What the manifest records of the teacher; the fingerprint is the sha256 of its weights and head size."""
    model = teacher.cross_encoder.model
    state = model.state_dict()
    header = json.dumps({"class": type(model).__name__, "num_labels": teacher.cross_encoder.num_labels})
    # A generator: one tensor's bytes at a time, never a second copy of the whole model.
    tensors = (t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in state.values())
    return {
        "model_name": teacher.model_name,
        "fingerprint": fingerprint(itertools.chain([header, *state.keys()], tensors)),
        "layers": list(teacher.layers),
        "heads": None if teacher.heads is None else list(teacher.heads),
        "max_length": teacher.max_length,
        "batch_size": teacher.batch_size,
        # bfloat16 targets are another recording; full precision keeps the entry of stores made before the option
        **({"autocast_dtype": teacher.autocast_dtype} if getattr(teacher, "autocast_dtype", None) else {}),
    }


def check_same_teacher(store: Store, entry: dict[str, Any], **settings: Any) -> None:
    """Refuse a store recorded by another teacher (weights, layers, heads, max_length) or other ``settings``."""
    recorded = {**store.teacher, "top_k": store.top_k, "weights_dtype": store.dtype.name}
    wanted = {**entry, **settings}
    keys = ("fingerprint", "layers", "heads", "max_length", "autocast_dtype", *settings)
    differ = [k for k in keys if recorded.get(k) != wanted.get(k)]
    if differ:
        raise AttentionStoreError(
            f"The attention store {store.path} was recorded with teacher {recorded['model_name']!r} and a different "
            f"{', '.join(differ)} ({', '.join(f'{k}: stored {recorded.get(k)!r}, given {wanted.get(k)!r}' for k in differ)}): "
            "its targets are not this teacher's. Record into a new folder, or delete the store."
        )
