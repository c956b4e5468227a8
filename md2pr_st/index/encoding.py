"""Encoding texts for inner-product search: queries and documents through the model's own prompts and towers.

For a model whose similarity is cosine (the sentence-transformers default) the embeddings are L2-normalised, so
the inner product *is* the cosine; for ``similarity_fn_name="dot"`` they are returned as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from md2pr_st import distributed

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _normalizes(model: SentenceTransformer) -> bool:
    name = getattr(model, "similarity_fn_name", None) or "cosine"
    if name == "cosine":
        return True
    if name == "dot":
        return False
    raise ValueError(
        f"The model's similarity_fn_name is {name!r}; FAISS inner-product search supports 'cosine' and 'dot'. "
        "Set model.similarity_fn_name = 'cosine' (or 'dot') to index it."
    )


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    kind: Literal["query", "document"] = "document",
    batch_size: int = 64,
    show_progress_bar: bool | None = None,
    across_processes: bool | None = None,
) -> np.ndarray:
    """Embed ``texts`` as queries or documents, ready for inner-product search.

    On several launched processes inside :func:`md2pr_st.distributed.shared_work` (or with ``across_processes=True``),
    each process encodes its contiguous share of ``texts`` and every process gets all the embeddings, in order.

    Uses :meth:`SentenceTransformer.encode_query` / :meth:`~SentenceTransformer.encode_document`, so the
    model's ``query`` / ``document`` prompts and a ``Router``'s query / document towers are respected. Returns a
    C-contiguous ``float32`` array of shape ``(len(texts), dim)``, L2-normalised when the model's similarity
    is cosine.

    Example:
        >>> from md2pr_st.models import resolve_model_name
        >>> from sentence_transformers import SentenceTransformer
        >>> model = SentenceTransformer(resolve_model_name(None), device="cpu")
        >>> encode(model, ["Paris is the capital of France."]).shape
        (1, 384)
    """
    if len(texts) == 0:
        raise ValueError(f"Nothing to encode: the list of {kind} texts is empty.")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ValueError(f"{len(bad)} {kind} texts are empty or not strings (positions {bad[:5]}).")
    if across_processes if across_processes is not None else distributed.sharing():
        start, stop = distributed.shard_bounds(len(texts))
        mine = [
            encode(
                model,
                texts[start:stop],
                kind,
                batch_size,
                show_progress_bar if distributed.is_main() else False,
                False,
            )
        ]
        return np.concatenate(distributed.gather_shards(mine if stop > start else []), axis=0)
    fn = model.encode_query if kind == "query" else model.encode_document
    embeddings = fn(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        convert_to_numpy=True,
        normalize_embeddings=_normalizes(model),
    )
    return np.ascontiguousarray(embeddings, dtype=np.float32)
