"""Small helpers shared by the stages: atomic writes, a full disk in one line, content fingerprints, the cache
folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from md2pr_st.outputs import OutputExistsError, honour_umask, mark_output, refuse_foreign_folder


class DiskFullError(OSError):
    """The disk filled while md2pr wrote an output; the message names the folder and how much it needed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


# How the writers md2pr calls report a full disk: the OS, numpy ("16000 requested and 8160 written"), safetensors
# ("StorageFull", "os error 28"), torch's checkpoint writer ("file write failed", "unexpected pos 110656 vs
# 110548": a short write), faiss and pyarrow (the OS's text).
_DISK_FULL = re.compile(
    r"No space left|StorageFull|os error 28|requested and \d+ written|file write failed|unexpected pos \d+ vs \d+",
    re.I,
)
_REQUESTED = re.compile(r"(\d+) requested and (\d+) written")


def format_bytes(size: float) -> str:
    """``1536`` -> ``'1.5 KB'``.

    Example:
        >>> format_bytes(16000), format_bytes(3 * 1024**3)
        ('15.6 KB', '3.0 GB')
    """
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def disk_full_error(
    exc: BaseException, path: str | Path, needed: int | None = None, written: int | None = None
) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path``, the space it ``needed`` (or at least: the bytes ``written`` before
    the disk filled, and what the failed write still asked for) and the space left, when ``exc`` (or an exception it
    was raised from) is a full disk in any writer's words; else None.

    Example:
        >>> import tempfile
        >>> error = disk_full_error(OSError("16000 requested and 8160 written"), Path(tempfile.mkdtemp()) / "x.npy")
        >>> str(error).split(":")[0], "needed at least 7.7 KB more" in str(error)
        ('The disk is full', True)
    """
    if isinstance(exc, DiskFullError):
        return exc
    seen: BaseException | None = exc
    while seen is not None and not (getattr(seen, "errno", None) == errno.ENOSPC or _DISK_FULL.search(str(seen))):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    requested = _REQUESTED.search(str(seen))
    folder = Path(path).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    free = format_bytes(shutil.disk_usage(folder).free)
    if needed:
        need = f"needed about {format_bytes(needed)}"
    elif requested:
        need = f"needed at least {format_bytes(int(requested.group(1)) - int(requested.group(2)))} more"
    else:
        need = "needed more space"
    if written and not needed:
        need += f" than the {format_bytes(written)} it had written"
    return DiskFullError(
        f"The disk is full: writing {path} {need}, and the disk of {folder} has {free} free. Free some space or "
        "choose an output on another disk, then run the command again; the previous output was kept."
    )


def _size(path: Path) -> int:
    """Bytes in a file or a folder's files."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


@contextlib.contextmanager
def atomic_path(
    target: str | Path, *, is_dir: bool = False, overwrite: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` in one rename.

    A crash inside the block leaves ``target`` as it was (never half-written); a full disk raises
    :class:`DiskFullError`, which names ``target``. A folder replaces ``target`` only when that is missing, empty
    or md2pr's own output of the same ``kind`` (:func:`~md2pr_st.outputs.refuse_foreign_folder`), or with
    ``overwrite``; otherwise :class:`~md2pr_st.outputs.OutputExistsError` is raised before anything is written.
    The new folder carries md2pr's marker with its ``kind``, and files and folders get the permissions the umask
    gives (not ``tempfile``'s 0600).

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
        refuse_foreign_folder(target, overwrite, kind=kind)
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
            mark_output(tmp, kind)
        if is_dir and target.exists():
            refuse_foreign_folder(target, overwrite, kind=kind)  # again: it may have appeared while the block ran
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        full = disk_full_error(exc, target, written=_size(tmp)) if isinstance(exc, Exception) else None
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if full is not None and full is not exc:
            raise full from exc
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
