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
    from md2pr_st.outputs import OutputExistsError, honour_umask, mark_output, refuse_foreign_folder

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


RESUME_FILE = "md2pr_resume.json"


def resume_checkpoint(
    checkpoints: str | Path, record: dict[str, Any], *, overwrite: bool = False, what: str = "training"
) -> Path | None:
    """The checkpoint a training run may resume from: the last complete one, and only when ``record`` (a
    fingerprint of the data, the starting model and every setting that changes the result) equals the one the
    interrupted run wrote next to its checkpoints.

    Checkpoints of another run (other data or settings, or written before records existed) are never resumed:
    :class:`~md2pr_st.outputs.OutputExistsError` names what differs, or, with ``overwrite``, they are deleted and
    training starts again. The record is then written for the next resume.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "student.checkpoints"
        >>> resume_checkpoint(folder, {"data": "abc", "learning_rate": 2e-05}) is None  # nothing to resume yet
        True
        >>> (folder / "checkpoint-5").mkdir()
        >>> _ = (folder / "checkpoint-5" / "trainer_state.json").write_text("{}")
        >>> resume_checkpoint(folder, {"data": "abc", "learning_rate": 2e-05}).name
        'checkpoint-5'
        >>> resume_checkpoint(folder, {"data": "xyz", "learning_rate": 2e-05})
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.OutputExistsError: ... holds checkpoints of an interrupted training run made with other data...
    """
    from md2pr_st import distributed

    last = _resume_checkpoint(checkpoints, record, overwrite, what) if distributed.is_main() else None
    last = distributed.broadcast(last)  # the main process decides (and writes) for every launched process
    if last is not None:
        logger.info("Resuming %s from %s", what, last)
    return last


def _resume_checkpoint(checkpoints: str | Path, record: dict[str, Any], overwrite: bool, what: str) -> Path | None:
    from md2pr_st.outputs import OutputExistsError, prepare_output_dir

    checkpoints = Path(checkpoints)
    record = json.loads(json.dumps(record, sort_keys=True, default=str))
    last = last_complete_checkpoint(checkpoints) if checkpoints.is_dir() else None
    try:
        saved = json.loads((checkpoints / RESUME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if last is not None and saved != record:
        if not overwrite:
            differs = sorted(k for k in {*record, *saved} if saved.get(k) != record.get(k)) if saved else []
            raise OutputExistsError(
                f"{checkpoints} holds checkpoints of an interrupted {what} run made with other "
                f"{', '.join(differs) if differs else 'inputs (no record of them)'}; resuming them would train "
                "the wrong model. Run again with the same inputs to resume, or pass --overwrite (overwrite=True) to "
                "discard them and start again."
            )
        logger.warning("Discarding %s: checkpoints of a %s run with other inputs.", checkpoints, what)
        shutil.rmtree(checkpoints)
        last = None
    prepare_output_dir(checkpoints, overwrite=overwrite)
    write_json(checkpoints / RESUME_FILE, record)
    return last


# Settings md2pr manages itself in the host's training arguments: where checkpoints go (next to the output, for
# resuming) cannot be moved by an override.
MANAGED_TRAINING_ARGUMENTS = ("output_dir",)


def training_arguments(defaults: dict[str, Any], overrides: Any = None) -> dict[str, Any]:
    """The keyword arguments of the host's ``*TrainingArguments``: md2pr's ``defaults`` with the user's ``overrides``
    (any other option of those classes: ``gradient_accumulation_steps``, ``bf16``, ``max_steps``, ``report_to``,
    evaluation and save strategies, ...) on top.

    Example:
        >>> training_arguments({"learning_rate": 2e-5, "output_dir": "x"}, {"learning_rate": 1e-5, "bf16": True})
        {'learning_rate': 1e-05, 'output_dir': 'x', 'bf16': True}
    """
    from md2pr_st import distributed

    overrides = dict(overrides or {})
    if distributed.active() and "use_cpu" not in overrides:
        import torch

        if not torch.cuda.is_available():  # several processes train as one job on CPUs only with use_cpu
            defaults = {**defaults, "use_cpu": True}
    managed = sorted(set(overrides) & set(MANAGED_TRAINING_ARGUMENTS))
    if managed:
        raise ValueError(
            f"The training argument(s) {managed} are set by md2pr (checkpoints go next to the output folder, so that "
            "an interrupted run resumes): give the output folder instead."
        )
    return {**defaults, **overrides}
