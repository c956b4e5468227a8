"""A pipeline stage's folder and its manifest: what makes a stage skippable, resumable or stale.

A stage is keyed by the fingerprint of its settings (which hold the fingerprints of what it was made from: data
contents, models, every setting that changes its result). :class:`Stage` is done when its ``stage.json`` carries
the same key; :meth:`Stage.start` deletes partial outputs (checkpoints) that were started under another key.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from md2pr_st import distributed
from md2pr_st.utils import atomic_path, fingerprint, write_json

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


class Stage:
    """A pipeline stage's folder with its manifest: ``done`` iff ``stage.json`` exists with the same settings."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.key = fingerprint([json.dumps(self.settings, sort_keys=True)])

    @property
    def manifest(self) -> dict[str, Any] | None:
        """The stage's ``stage.json`` (as the main process reads it, on every process of a launched run)."""
        path = self.folder / STAGE_FILE
        manifest = None
        if distributed.is_main():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            except json.JSONDecodeError:
                manifest = None
        return distributed.broadcast(manifest)

    @property
    def done(self) -> bool:
        manifest = self.manifest
        return manifest is not None and manifest.get("key") == self.key

    def start(self, partial: Sequence[str | Path] = ()) -> None:
        """Begin (or resume) the stage: if the partial outputs on disk (``partial``: checkpoints, a half-trained
        model) were started under other settings, delete them so they are not resumed; then record this key. On the
        main process of a launched run; the others wait for it."""
        if distributed.is_main():
            self._start(partial)
        distributed.barrier()

    def _start(self, partial: Sequence[str | Path]) -> None:
        pending = self.folder / "stage.pending.json"
        try:
            started = json.loads(pending.read_text(encoding="utf-8")).get("key") if pending.is_file() else None
        except json.JSONDecodeError:
            started = None
        if started != self.key:
            for path in partial:
                if Path(path).exists():
                    logger.info("Settings changed since %s was started: removing %s", self.folder, path)
                    shutil.rmtree(path, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(pending, {"key": self.key, "settings": self.settings})

    def finish(self, outputs: dict[str, Any] | None = None, seconds: float | None = None) -> dict[str, Any]:
        """Record the stage as done (the main process writes; the others wait for it)."""
        manifest = {"key": self.key, "settings": self.settings, "outputs": outputs or {}, "seconds": seconds}
        if distributed.is_main():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / STAGE_FILE, manifest)
        distributed.barrier()
        return manifest


def save_dataset(dataset: Dataset, folder: str | Path, kind: str | None = None) -> Path:
    """``Dataset.save_to_disk`` into ``folder`` atomically, marked as that ``kind`` of output (``"mined"``,
    ``"filtered"``), by the main process of a launched run; the others wait for it."""
    if distributed.is_main():
        with atomic_path(folder, is_dir=True, kind=kind) as tmp:
            dataset.save_to_disk(str(tmp))
    distributed.barrier()
    return Path(folder)
