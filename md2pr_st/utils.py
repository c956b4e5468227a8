"""Small helpers shared by the stages: atomic writes, content fingerprints, the cache folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from md2pr_st.outputs import OutputExistsError, honour_umask, mark_output, refuse_foreign_folder


@contextlib.contextmanager
def atomic_path(target: str | Path, *, is_dir: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    A crash inside the block leaves ``target`` as it was (never half-written). A folder replaces ``target`` only
    when that is missing, empty or md2pr's own (:func:`~md2pr_st.outputs.is_own_folder`), or with ``overwrite``;
    otherwise :class:`~md2pr_st.outputs.OutputExistsError` is raised before anything is written. The new folder
    carries md2pr's marker, and files and folders get the permissions the umask gives (not ``tempfile``'s 0600).

    Example:
        >>> import tempfile
        >>> project = Path(tempfile.mkdtemp())
        >>> _ = (project / "main.py").write_text("print('mine')")
        >>> with atomic_path(project, is_dir=True) as tmp:
        ...     _ = (tmp / "model.txt").write_text("weights")
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.OutputExistsError: ... exists and holds files md2pr did not write (main.py)...
        >>> (project / "main.py").is_file()
        True
    """
    target = Path(target)
    if is_dir:
        refuse_foreign_folder(target, overwrite)
    elif target.is_dir():
        raise OutputExistsError(f"{target} is a folder; md2pr writes a file there only in place of a file.")
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        honour_umask(tmp)
        if is_dir:
            mark_output(tmp)
        if is_dir and target.exists():
            refuse_foreign_folder(target, overwrite)  # again: it may have appeared while the block ran
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


def default_cache_dir() -> Path:
    """``$MD2PR_CACHE`` if set, else ``~/.cache/md2pr_st``: downloads, parsed data and installed models."""
    return Path(os.environ.get("MD2PR_CACHE", Path.home() / ".cache" / "md2pr_st")).expanduser()


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
