"""Outputs that never destroy what the user had: ownership markers, up-front checks, one writer per folder.

Every folder md2pr writes carries a hidden marker file (:data:`OUTPUT_MARKER`). A folder may be replaced or written
into only when it is empty, carries the marker (or, for folders written before markers existed, one of md2pr's own
manifest files), or the caller passes ``overwrite=True``; anything else raises :class:`OutputExistsError` naming a
few of the files that would be lost. :func:`check_output` does the same check, and a write probe, before a stage
starts its work, and :func:`output_lock` keeps a second run from writing the same output at the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

OUTPUT_MARKER = ".md2pr_output"
# Files that only md2pr writes: a folder holding one was written by md2pr before markers existed.
_OWN_FILES = (
    "stage.json",
    "run_info.json",
    "md2pr_mining.json",
    "md2pr_filter.json",
    "md2pr_teacher.json",
    "md2pr_index.json",
    "md2pr_manifest.json",
    "md2pr_card_data.json",
    "md2pr_resume.json",
)


class UsageError(ValueError):
    """A setting the user has to change (the command line exits with code 2)."""


class OutputExistsError(UsageError, FileExistsError):
    """The output path holds files md2pr did not write (or a file where a folder is expected, or the reverse)."""


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


def _umask() -> int:
    try:  # thread-safe where /proc exists; os.umask can only be read by setting it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path) -> None:
    """Give ``path`` the mode an ordinary ``open`` / ``mkdir`` would have (``tempfile`` makes 0600 / 0700)."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def mark_output(folder: str | Path, kind: str = "output") -> None:
    """Write the marker that says md2pr made ``folder`` (so a later run may replace or resume it)."""
    marker = Path(folder) / OUTPUT_MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"written_by": "md2pr-st", "kind": kind}) + "\n", encoding="utf-8")
        honour_umask(marker)


def is_own_folder(folder: str | Path) -> bool:
    """True when ``folder`` is empty, carries md2pr's marker, or holds one of md2pr's own manifest files.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> is_own_folder(folder)
        True
        >>> _ = (folder / "main.py").write_text("print('mine')")
        >>> is_own_folder(folder)
        False
        >>> mark_output(folder)
        >>> is_own_folder(folder)
        True
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    entries = [p for p in folder.iterdir() if not p.name.endswith(".lock")]
    if not entries or (folder / OUTPUT_MARKER).is_file():
        return True
    if any((folder / name).is_file() for name in _OWN_FILES):
        return True
    return any((p / "stage.json").is_file() or p.name.startswith("checkpoint-") for p in entries if p.is_dir())


def _refusal(path: Path, option: str | None, reason: str, can_overwrite: bool = True) -> OutputExistsError:
    name = f"{option} {path}" if option else str(path)
    hint = f", or pass {'--overwrite' if option else 'overwrite=True'} to replace it" if can_overwrite else ""
    return OutputExistsError(
        f"{name} {reason}. Choose a new or empty path{hint}; md2pr never deletes files it did not write."
    )


def refuse_foreign_folder(folder: str | Path, overwrite: bool = False, option: str | None = None) -> None:
    """Raise :class:`OutputExistsError` unless ``folder`` is missing, md2pr's own (see :func:`is_own_folder`) or
    ``overwrite`` is set; a file where a folder is expected is always refused."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise _refusal(folder, option, "is a file, not a folder (it would be replaced by one)", False)
    if overwrite or is_own_folder(folder):
        return
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise _refusal(folder, option, f"exists and holds files md2pr did not write ({shown})")


def prepare_output_dir(folder: str | Path, overwrite: bool = False, option: str | None = None) -> Path:
    """Create ``folder`` (or adopt an existing one md2pr may write into) and mark it as md2pr's; a folder that
    works in place, such as a pipeline run folder."""
    folder = Path(folder)
    refuse_foreign_folder(folder, overwrite, option)
    folder.mkdir(parents=True, exist_ok=True)
    mark_output(folder, "run")
    return folder


def _writable_parent(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (``path`` itself when it is a folder)."""
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        probe = probe.parent
    return probe


def check_writable(path: str | Path, option: str | None = None) -> None:
    """Raise a clear :class:`PermissionError` now, before any work, when ``path`` cannot be created or written."""
    path = Path(path).expanduser()
    parent = _writable_parent(path.absolute())
    name = f"{option} {path}" if option else str(path)
    if not parent.is_dir():
        raise UsageError(f"{name}: {parent} is a file, so nothing can be created below it. Choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".md2pr-write-test.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"{name}: cannot write in {parent} ({exc.strerror or exc}). Choose a writable location or fix its "
            "permissions."
        ) from None


def check_output(
    path: str | Path, *, kind: str = "folder", overwrite: bool = False, option: str | None = None
) -> Path:
    """Check an output before any work: a ``kind="folder"`` output must be missing, md2pr's or ``overwrite``;
    a ``kind="file"`` output must not be a folder, and an existing file needs ``overwrite`` unless
    :func:`is_own_file` says md2pr wrote it; either way the location must be writable.

    Example:
        >>> import tempfile
        >>> project = Path(tempfile.mkdtemp())
        >>> _ = (project / "main.py").write_text("print('mine')")
        >>> check_output(project, option="--output_dir")
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.OutputExistsError: --output_dir ... exists and holds files md2pr did not write (main.py)...
    """
    path = Path(path)
    if kind == "folder":
        refuse_foreign_folder(path, overwrite, option)
    elif path.is_dir():
        raise _refusal(path, option, "is a folder; give a file path", False)
    elif path.exists() and not overwrite and not is_own_file(path):
        raise _refusal(path, option, "exists and holds a file md2pr did not write")
    check_writable(path, option)
    return path


def is_own_file(path: str | Path) -> bool:
    """A JSON file md2pr wrote: a results file of ``md2pr eval`` or a statistics file of ``md2pr filter``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and ({"n_queries", "dataset", "model"} <= set(data) or "rounds" in data)


def lock_path(target: str | Path) -> Path:
    """The lock file of an output: a hidden sibling, so that it is not inside what an atomic write replaces."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: str | Path, option: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` for the block; a second process asking for it gets
    :class:`OutputLockedError` at once. The lock is the kernel's (a killed run leaves none behind), on a hidden
    sibling file that is removed when the block ends.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "run"
        >>> with output_lock(out):
        ...     with output_lock(out):  # a second writer of the same output
        ...         pass
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.OutputLockedError: ...is being written by another md2pr run (pid ...)...
        >>> lock_path(out).exists()
        False
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _acquire(path, target, option)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        with contextlib.suppress(OSError):  # while still locked: no other process holds a lock on this file
            path.unlink()
        handle.close()  # closing releases the lock


def _acquire(path: Path, target: str | Path, option: str | None):
    """The open, locked lock file. A file unlinked by its previous holder between our open and our lock is not the
    lock any more: then try again on the new one."""
    while True:
        handle = open(path, "a+", encoding="utf-8")
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            name = f"{option} {target}" if option else str(target)
            raise OutputLockedError(
                f"{name} is being written by another md2pr run (pid {holder}). Wait for it to finish, or choose "
                "another output; two runs writing one folder would mix their files."
            )
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _try_lock(handle) -> bool:
    try:
        import fcntl  # POSIX
    except ImportError:  # Windows: msvcrt locks a byte range of the file
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
