"""What a model folder may hold to be pushed: a plain sentence-transformers model, its own files only.

The rules of :func:`validate_model_folder`: no remote code (only sentence-transformers modules, no ``auto_map``),
safetensors weights only (no pickles), and no symlink to a file outside the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from md2pr_st.models import PICKLE_SUFFIXES, pickle_weights_message


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def iter_upload_files(folder: str | Path) -> Iterator[Path]:
    """The files of ``folder`` that belong in a model repo (no hidden files or folders, no ``__pycache__``).

    Raises:
        ValueError: a symlink that points outside ``folder`` (its target is not the folder's to upload), a
            broken one, or one to a folder. In the Hub cache, a snapshot's links to the repo's ``blobs/`` are the
            folder's own files.

    Example:
        >>> from md2pr_st.models import embedded_student_path
        >>> sorted(p.name for p in iter_upload_files(embedded_student_path()))[:3]  # no .gitattributes
        ['README.md', 'config.json', 'config.json']
    """
    folder = Path(folder)
    roots = [folder.resolve()]
    if folder.resolve().parent.name == "snapshots":
        roots.append(folder.resolve().parent.parent / "blobs")
    for dirpath, dirnames, filenames in os.walk(folder):  # does not follow directory links
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_symlink():
                continue
            if not _inside(path.resolve(), roots):
                raise ValueError(
                    f"{path} is a symlink to {path.resolve()}, outside {folder}: only the folder's own files are "
                    "pushed. Replace the link by a copy of the file, or remove it."
                )
            if not path.exists():
                raise ValueError(f"{path} is a broken symlink (to {path.resolve()}); remove it or restore its target.")
            if path.is_dir():
                raise ValueError(f"{path} is a symlink to a folder; replace it by the folder itself.")
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def validate_model_folder(model_dir: str | Path) -> None:
    """Check that ``model_dir`` is a plain sentence-transformers model: no remote code, no pickles, no links out.

    Checks: ``modules.json`` lists only ``sentence_transformers`` modules, at paths inside the folder (a module
    without files, e.g. ``Normalize``, needs no folder: the host loads it without one); weights are safetensors
    (no ``*.bin``/``*.pt``/pickle files anywhere); no ``auto_map`` (custom code) in a ``config.json``; no symlink
    to a file outside the folder. Whether the model loads is checked by loading it (:func:`push_to_hub`).

    Raises:
        FileNotFoundError: no ``modules.json``.
        ValueError: pickle weights, no safetensors weights, custom modules or code, a symlink out of the folder.

    Example:
        >>> from md2pr_st.models import embedded_student_path
        >>> validate_model_folder(embedded_student_path())  # all-MiniLM-L6-v2 as on the Hub: no 2_Normalize/
        >>> import tempfile
        >>> validate_model_folder(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... has no modules.json: it is not a saved SentenceTransformer ...
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no modules.json: it is not a saved SentenceTransformer (save one with model.save(path))."
        )
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{modules_file} is not valid JSON: {exc}") from exc
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{modules_file} should list the model's modules, but holds {str(modules)[:80]!r}.")
    for module in modules:
        module_type, module_path = str(module.get("type", "")), str(module.get("path", ""))
        if not module_type.startswith("sentence_transformers."):
            raise ValueError(
                f"{model_dir}: module {module.get('name')!r} has type {module_type!r}, which is not part of "
                "sentence-transformers; loading it would need custom code (trust_remote_code). MD2PR models are "
                "plain sentence-transformers folders: rebuild the model from sentence-transformers modules."
            )
        if Path(module_path).is_absolute() or ".." in Path(module_path).parts:
            raise ValueError(f"{modules_file}: module path {module_path!r} is not a folder inside the model.")
    files = list(iter_upload_files(model_dir))
    pickles = [p.relative_to(model_dir).as_posix() for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise ValueError(pickle_weights_message(model_dir, pickles, "pushed"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"{model_dir} has no *.safetensors weights; re-save it with `SentenceTransformer.save`.")
    for config_file in (p for p in files if p.name == "config.json"):
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file} is not valid JSON: {exc}") from exc
        if isinstance(config, dict) and config.get("auto_map"):
            raise ValueError(
                f"{config_file} has an auto_map: the model needs custom code (trust_remote_code) to load. Push a "
                "model built on a transformers architecture instead."
            )


def resolve_source(run_or_model_dir: str | Path) -> tuple[Path, Path | None]:
    """``(model folder, run folder or None)`` of a folder given to push: a model folder, or a run folder with
    ``model/``.

    Example:
        >>> from md2pr_st.models import embedded_student_path
        >>> resolve_source(embedded_student_path()) == (embedded_student_path(), None)
        True
    """
    path = Path(run_or_model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist or is not a folder; give a model folder or a run folder.")
    if (path / "modules.json").is_file():
        return path, None
    if (path / "model" / "modules.json").is_file():
        return path / "model", path
    raise FileNotFoundError(
        f"{path} is neither a model folder (no modules.json) nor a run folder (no model/modules.json)."
    )
