"""Outputs that never destroy what the user had: ownership markers that know what an output is, up-front checks,
one writer per folder.

Every folder md2pr writes carries a hidden marker file (:data:`OUTPUT_MARKER`) that records the kind of output
(:data:`OUTPUT_KINDS`: a mined set, a student, a pipeline run, ...) and the command that made it. A folder may be
replaced or written into only when it is empty, or md2pr's own output of the same kind (a folder written before
markers or kinds existed, recognised by md2pr's manifest files, counts as the same kind when its kind cannot be
told), or the caller passes ``overwrite=True``; anything else raises :class:`OutputExistsError` naming what is
there. An output that is, holds or lies inside one of the command's own inputs is refused too
(:func:`check_inputs`; the input itself even with ``overwrite``). :func:`check_output` does these checks, and a
write probe, before a stage starts its work, and :func:`output_lock` keeps a second run from writing the same
output at the same time.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

OUTPUT_MARKER = ".md2pr_output"
#: The kinds of output md2pr writes (the marker's ``kind``), as a message names them.
OUTPUT_KINDS = {
    "mined": "a mined training set",
    "filtered": "a filtered training set",
    "student": "a student model",
    "teacher": "a teacher cross-encoder",
    "pipeline": "a pipeline run",
    "evaluation": "evaluation results",
    "statistics": "false-negative filter statistics",
    "index": "a FAISS index",
    "embeddings": "a corpus-embedding cache",
    "checkpoints": "training checkpoints",
    "data": "a data cache",
}
# Files that only md2pr writes: a folder holding one was written by md2pr before markers existed; the kind of
# output each one tells (None: md2pr's, of a kind it does not tell).
_OWN_FILES = {
    "md2pr_mining.json": "mined",
    "md2pr_filter.json": "filtered",
    "md2pr_teacher.json": "teacher",
    "md2pr_index.json": "index",
    "run_info.json": "pipeline",
    "stage.json": "pipeline",
    "md2pr_resume.json": "checkpoints",
    "md2pr_manifest.json": None,
    "md2pr_card_data.json": None,
}
# The command running now ("md2pr mine"), recorded in the markers it writes and named in its refusals.
_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("md2pr_command", default=None)


class UsageError(ValueError):
    """A setting the user has to change (the command line exits with code 2)."""


class OutputExistsError(UsageError, FileExistsError):
    """The output path holds files md2pr did not write, another kind of md2pr output or one of the command's
    inputs (or a file where a folder is expected, or the reverse)."""


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


@contextlib.contextmanager
def command(name: str) -> Iterator[None]:
    """Within the block, markers record ``name`` (``"md2pr mine"``) as what made an output, and refusals name it."""
    token = _COMMAND.set(name)
    try:
        yield
    finally:
        _COMMAND.reset(token)


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


def _read_marker(folder: Path) -> dict:
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def mark_output(folder: str | Path, kind: str | None = None) -> None:
    """Write the marker that says md2pr made ``folder``, what kind of output it is (:data:`OUTPUT_KINDS`) and which
    command made it, so that a later run of the same kind may replace or resume it. A marker that already names
    the kind is kept."""
    marker = Path(folder) / OUTPUT_MARKER
    if marker.is_file() and (kind is None or _read_marker(Path(folder)).get("kind") == kind):
        return
    record = {"written_by": "md2pr-st", "kind": kind or "output", "made_by": _COMMAND.get() or "md2pr_st"}
    marker.write_text(json.dumps(record) + "\n", encoding="utf-8")
    honour_umask(marker)


def output_kind(folder: str | Path) -> str | None:
    """The kind of md2pr output ``folder`` is (a key of :data:`OUTPUT_KINDS`), from its marker or, for a folder
    written before kinds existed, from md2pr's manifest files in it; None when that cannot be told.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> output_kind(folder) is None
        True
        >>> mark_output(folder, "mined")
        >>> output_kind(folder)
        'mined'
    """
    folder = Path(folder)
    kind = _read_marker(folder).get("kind")
    if kind in OUTPUT_KINDS:
        return kind
    for name, told in _OWN_FILES.items():
        if told and (folder / name).is_file():
            return told
    if (folder / "modules.json").is_file() and (folder / OUTPUT_MARKER).is_file():
        return "student"  # a model md2pr saved before kinds existed (a teacher has its md2pr_teacher.json)
    with contextlib.suppress(OSError):
        for sub in folder.iterdir():
            if (sub / "stage.json").is_file():
                return "pipeline"
            if (sub / "manifest.json").is_file() and (sub / "chunk_00000.npy").is_file():
                return "embeddings"
    return None


def describe(path: str | Path) -> str:
    """What md2pr output ``path`` is, for a message: ``"a mined training set (made by md2pr mine)"``."""
    kind = output_kind(path)
    made_by = _read_marker(Path(path)).get("made_by")
    what = OUTPUT_KINDS.get(kind or "", "an md2pr output")
    return f"{what} (made by {made_by})" if made_by and made_by != "md2pr_st" else what


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


def _name(path: Path, option: str | None) -> str:
    return f"{option} {path}" if option else str(path)


def _flag(option: str | None) -> str:
    return "--overwrite" if option else "overwrite=True"


def _refusal(path: Path, option: str | None, reason: str, can_overwrite: bool = True) -> OutputExistsError:
    hint = f", or pass {_flag(option)} to replace it" if can_overwrite else ""
    return OutputExistsError(
        f"{_name(path, option)} {reason}. Choose a new or empty path{hint}; md2pr never deletes files it did not "
        "write."
    )


def refuse_foreign_folder(
    folder: str | Path, overwrite: bool = False, option: str | None = None, kind: str | None = None
) -> None:
    """Raise :class:`OutputExistsError` unless ``folder`` is missing, md2pr's own (see :func:`is_own_folder`) and
    not another ``kind`` of output (see :func:`refuse_other_kind`), or ``overwrite`` is set; a file where a folder
    is expected is always refused."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise _refusal(folder, option, "is a file, not a folder (it would be replaced by one)", False)
    if overwrite:
        return
    if not is_own_folder(folder):
        names = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise _refusal(folder, option, f"exists and holds files md2pr did not write ({shown})")
    refuse_other_kind(folder, kind, overwrite, option)


def refuse_other_kind(
    folder: str | Path, kind: str | None, overwrite: bool = False, option: str | None = None
) -> None:
    """Raise :class:`OutputExistsError` when ``folder`` is an md2pr output of another kind than ``kind`` (a folder
    whose kind cannot be told passes), unless ``overwrite``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> mark_output(folder, "mined")
        >>> refuse_other_kind(folder, "filtered", option="--output")
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.OutputExistsError: --output ... holds a mined training set; writing a filtered training set \
there would replace it. Choose another path, or pass --overwrite to replace it.
    """
    folder = Path(folder)
    found = output_kind(folder) if kind and folder.is_dir() and not overwrite else None
    if found is None or found == kind:
        return
    raise OutputExistsError(
        f"{_name(folder, option)} holds {describe(folder)}; writing {OUTPUT_KINDS.get(kind, kind)} there would "
        f"replace it. Choose another path, or pass {_flag(option)} to replace it."
    )


def check_inputs(
    output: str | Path, inputs: Mapping[str, str | Path | None], overwrite: bool = False, option: str | None = None
) -> None:
    """Refuse an output that is, holds or lies inside one of the command's ``inputs`` (``{option: path}``; names
    that are not local paths, such as Hub ids, are skipped): replacing it would delete an input, writing into one
    would change it. ``overwrite`` allows the last two; an output that *is* an input is refused even then (the
    input would be destroyed while it is read).

    Example:
        >>> import tempfile
        >>> data = Path(tempfile.mkdtemp())
        >>> check_inputs(data, {"--input": data}, overwrite=True, option="--output")
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.OutputExistsError: --output ... is the input --input ...: it would be destroyed while it \
is read. Choose another output path.
    """
    target = Path(output).expanduser().resolve()
    for name, value in inputs.items():
        if value is None or not str(value) or not Path(value).expanduser().exists():
            continue
        source = Path(value).expanduser().resolve()
        where = _name(Path(output), option)
        if source == target:
            raise OutputExistsError(
                f"{where} is the input {name} {value}: it would be destroyed while it is read. Choose another "
                "output path."
            )
        if overwrite:
            continue
        if target in source.parents:
            reason = f"holds the input {name} {value}: replacing it would delete that input"
        elif source in target.parents:
            reason = f"lies inside the input {name} {value}: writing there would change that input"
        else:
            continue
        raise OutputExistsError(f"{where} {reason}. Choose a path outside it, or pass {_flag(option)}.")


def prepare_output_dir(
    folder: str | Path, overwrite: bool = False, option: str | None = None, kind: str | None = None
) -> Path:
    """Create ``folder`` (or adopt an existing one md2pr may write into) and mark it as md2pr's ``kind`` of output;
    a folder that works in place, such as a pipeline run folder."""
    folder = Path(folder)
    refuse_foreign_folder(folder, overwrite, option, kind)
    folder.mkdir(parents=True, exist_ok=True)
    mark_output(folder, kind)
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
    name = _name(path, option)
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
    path: str | Path,
    *,
    kind: str | None = None,
    file: bool = False,
    overwrite: bool = False,
    option: str | None = None,
    inputs: Mapping[str, str | Path | None] | None = None,
) -> Path:
    """Check an output before any work: a folder output must be missing, md2pr's output of the same ``kind`` or
    ``overwrite``; a ``file`` output must not be a folder, and an existing file needs ``overwrite`` unless
    :func:`own_file_kind` says md2pr wrote it as that ``kind``; neither may be, hold or lie inside one of the
    command's ``inputs`` (:func:`check_inputs`); either way the location must be writable.

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
    check_inputs(path, inputs or {}, overwrite, option)
    if not file:
        refuse_foreign_folder(path, overwrite, option, kind)
    elif path.is_dir():
        raise _refusal(path, option, "is a folder; give a file path", False)
    elif path.exists() and not overwrite:
        found = own_file_kind(path)
        if found is None:
            raise _refusal(path, option, "exists and holds a file md2pr did not write")
        if kind and found != kind:
            raise OutputExistsError(
                f"{_name(path, option)} holds {OUTPUT_KINDS[found]}; writing {OUTPUT_KINDS.get(kind, kind)} there "
                f"would replace it. Choose another path, or pass {_flag(option)} to replace it."
            )
    check_writable(path, option)
    return path


def own_file_kind(path: str | Path) -> str | None:
    """The kind of a JSON file md2pr wrote (``"evaluation"``: results of ``md2pr eval``; ``"statistics"``: of
    ``md2pr filter``), or None for any other file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if {"n_queries", "dataset", "model"} <= set(data):
        return "evaluation"
    return "statistics" if "rounds" in data else None


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
