"""Small helpers shared by the stages: atomic writes, content fingerprints, trainer checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    A crash inside the block leaves ``target`` as it was (never half-written).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir and target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def fingerprint(parts: Iterable[str | bytes]) -> str:
    """sha256 over a sequence of strings/bytes, each length-prefixed so that boundaries matter."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The ``checkpoint-N`` in ``folder`` with the highest ``N`` that the host trainer finished writing, or None.

    The trainer writes a checkpoint's ``trainer_state.json`` last, so a checkpoint is complete iff that file parses.
    A process killed while writing a checkpoint leaves a ``checkpoint-N`` without weights or state;
    ``trainer.train(resume_from_checkpoint=True)`` takes the highest ``N`` whatever it holds and then fails, at
    every rerun. Incomplete checkpoints are deleted here; resume from the returned path instead.
    """
    complete = []
    for path in Path(folder).glob("checkpoint-*"):
        if not path.is_dir() or not path.name.split("-")[-1].isdigit():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("Deleting the incomplete checkpoint %s (its writer was interrupted)", path)
            shutil.rmtree(path, ignore_errors=True)
            continue
        complete.append(path)
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)
