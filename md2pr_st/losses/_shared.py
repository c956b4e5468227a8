"""Plumbing shared by the MD2PR losses: student forward with token embeddings, online teacher, input checks.

No formula lives here; each one is in the docstring of the loss file that computes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.util import check_teacher_targets
from torch import Tensor, nn

from md2pr_st import _host
from md2pr_st.alignment import StudentText, decode_student_texts
from md2pr_st.teacher import OfflineTeacher, Teacher, candidate_pairs

logger = logging.getLogger(__name__)


class LossParts(dict):
    """A loss's weighted parts, ``{name: scalar tensor}``, that behave like their sum under ``+``, ``-``, ``*``, ``/``.

    The host's trainer sums a dict returned by a loss and logs each entry; its loss wrappers (``MatryoshkaLoss``,
    ``Matryoshka2dLoss``, ``AdaptiveLayerLoss``) combine the inner loss's outputs arithmetically
    (``loss += weight * inner(...)``). Scaling scales every part and adding adds part to part, so the combination
    is still a dict of parts that sums to the wrapper's loss; a plain number or tensor added to it (a wrapper's own
    term, e.g. AdaptiveLayerLoss's KL) goes into the part ``"other"``.

    Example:
        >>> import torch
        >>> parts = LossParts(contrastive=torch.tensor(2.0), sentence_level=torch.tensor(1.0))
        >>> combined = 0.0
        >>> combined += 0.5 * parts
        >>> combined += parts / 2 + torch.tensor(0.25)
        >>> {k: v.item() for k, v in combined.items()}
        {'contrastive': 2.0, 'sentence_level': 1.0, 'other': 0.25}
    """

    def _map(self, fn: Any) -> LossParts:
        return LossParts({key: fn(value) for key, value in self.items()})

    def __mul__(self, other: Any) -> LossParts:
        return self._map(lambda value: value * other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> LossParts:
        return self._map(lambda value: value / other)

    def __neg__(self) -> LossParts:
        return self._map(lambda value: -value)

    def __add__(self, other: Any) -> LossParts:
        out = LossParts(self)
        if isinstance(other, dict):
            for key, value in other.items():
                out[key] = out[key] + value if key in out else value
        elif not (isinstance(other, (int, float)) and other == 0):
            out["other"] = out["other"] + other if "other" in out else other
        return out

    __radd__ = __add__

    def __sub__(self, other: Any) -> LossParts:
        return self + (-other)

    def __rsub__(self, other: Any) -> LossParts:
        return (-self) + other


def as_teacher(teacher: Teacher | OfflineTeacher | Any | str | Path | None) -> Teacher | OfflineTeacher | None:
    """Accept a :class:`Teacher`, an :class:`~md2pr_st.teacher.OfflineTeacher` (recorded attention, used as it is),
    a ``CrossEncoder`` or a model name; None stays None."""
    if teacher is None or isinstance(teacher, (Teacher, OfflineTeacher)):
        return teacher
    return Teacher(teacher)


def teacher_name(teacher: Teacher | None) -> str | None:
    return None if teacher is None else teacher.model_name


def prompt_length_of(features: dict[str, Any]) -> int | None:
    value = features.get("prompt_length")
    if value is None:
        return None
    if isinstance(value, Tensor):
        return int(value.reshape(-1)[0].item())
    return int(value)


class StudentTokenizers:
    """The student's tokenizers, taken from the model when the loss is built: the one that produced a column's
    features is the routed tower's for a ``Router``, else the model's.

    Taken at construction because a distributed trainer replaces ``loss.model`` with its
    ``DistributedDataParallel`` wrapper, which has neither ``tokenizer`` nor the model's modules (the host's losses
    that hold a guide model keep what they need the same way). A plain object, not a module: nothing is added to the
    loss's parameters.
    """

    def __init__(self, model: nn.Module) -> None:
        model = getattr(model, "module", model)  # already wrapped: the model inside
        first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
        self._router = first if isinstance(first, _host.Router) else None
        self._routes: dict[str, Any] = {}
        if self._router is not None:
            for route, modules in self._router.sub_modules.items():
                found = [m.tokenizer for m in modules if getattr(m, "tokenizer", None) is not None]
                if found:
                    self._routes[route] = found[0]
        self._default = getattr(model, "tokenizer", None)

    def __call__(self, features: dict[str, Any]) -> Any:
        if self._router is not None:
            route = _host.router_route(self._router, features)
            if route in self._routes:
                return self._routes[route]
        if self._default is None:
            raise ValueError("The student has no tokenizer: the MD2PR losses with a teacher need a text model.")
        return self._default


def student_tokenizer(model: nn.Module | StudentTokenizers, features: dict[str, Any]) -> Any:
    """The tokenizer that produced ``features`` (see :class:`StudentTokenizers`)."""
    tokenizers = model if isinstance(model, StudentTokenizers) else StudentTokenizers(model)
    return tokenizers(features)


# The features key under which the collator hands the loss each column's original texts (see keep_original_texts).
ORIGINAL_TEXTS = "md2pr_original_texts"


def keep_original_texts(model: nn.Module) -> None:
    """Make ``model.preprocess`` also return the texts it was given, under :data:`ORIGINAL_TEXTS`.

    A loss receives token ids only. The host's data collator builds each column's features with the model's
    ``preprocess``, so a ``preprocess`` that keeps its input texts hands them to the loss: the online teacher then
    reads what the user wrote (case, punctuation, no prompt, the whole text) rather than the student's decoding of
    it. The losses hide the key from the student's forward pass (:func:`original_texts_hidden`). Call it
    before building the trainer (the losses do, in their constructor); idempotent.
    """
    preprocess = getattr(model, "preprocess", None)
    if preprocess is None or getattr(preprocess, "_md2pr_keeps_texts", False):
        return

    def preprocess_keeping_texts(inputs: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        features = preprocess(inputs, *args, **kwargs)
        # Any sequence of texts: a list, a tuple, a datasets Column (`dataset["query"]`).
        if not isinstance(inputs, (str, bytes, dict)) and hasattr(inputs, "__len__") and hasattr(inputs, "__iter__"):
            texts = list(inputs)
            if all(isinstance(text, str) for text in texts):
                features[ORIGINAL_TEXTS] = [str(text) for text in texts]
        return features

    preprocess_keeping_texts._md2pr_keeps_texts = True  # type: ignore[attr-defined]
    model.preprocess = preprocess_keeping_texts


@contextmanager
def original_texts_hidden(features_list: Sequence[dict[str, Any]]) -> Iterator[None]:
    """The features as the student expects them while the block runs: :data:`ORIGINAL_TEXTS` taken out of each
    dict and put back afterwards. In place, not copied: the host's ``AdaptiveLayerLoss`` hands the layers' embeddings
    from one call of the inner loss to the next through these very dicts, and the merged forward over the candidate
    columns needs their keys to agree."""
    stash = [features.pop(ORIGINAL_TEXTS, None) for features in features_list]
    try:
        yield
    finally:
        for features, texts in zip(features_list, stash):
            if texts is not None:
                features[ORIGINAL_TEXTS] = texts


def decode_columns(
    model: nn.Module | StudentTokenizers, features_list: Sequence[dict[str, Any]]
) -> list[list[StudentText]]:
    """The texts for the teacher, per column and row: the originals when the collator passed them on
    (:func:`keep_original_texts`), else decoded from the student's ids
    (:func:`md2pr_st.alignment.decode_student_texts`)."""
    tokenizers = model if isinstance(model, StudentTokenizers) else StudentTokenizers(model)
    columns = []
    for features in features_list:
        if "input_ids" not in features:
            raise ValueError(
                "The MD2PR losses with an online teacher need text inputs with `input_ids` (the teacher reads the "
                f"decoded text), but a column holds only {sorted(features)}."
            )
        columns.append(
            decode_student_texts(
                tokenizers(features),
                features["input_ids"],
                features.get("attention_mask"),
                prompt_length_of(features),
                features.get(ORIGINAL_TEXTS),
            )
        )
    return columns


def _split_output(output: dict[str, Tensor], n: int) -> list[dict[str, Tensor]]:
    parts = []
    for c in range(n):
        part = {}
        for key in ("sentence_embedding", "token_embeddings", "attention_mask"):
            value = output[key]
            rows = value.shape[0] // n
            part[key] = value[c * rows : (c + 1) * rows]
        parts.append(part)
    return parts


def embed_with_tokens(model: nn.Module, features_list: Sequence[dict[str, Any]]) -> list[dict[str, Tensor]]:
    """Run the student once per column group and keep sentence *and* token embeddings.

    The query column has its own forward; the candidate columns share one merged forward when their features
    allow it (as the host's ``embed_columns`` does). ``token_embeddings`` are the output of the student's
    ``Transformer`` module (its last layer), which ``Pooling`` leaves in the output dict.
    """
    query = model(features_list[0])
    outputs = [{key: query[key] for key in ("sentence_embedding", "token_embeddings", "attention_mask")}]
    candidates = list(features_list[1:])
    merged = _host.merge_feature_batches(candidates) if len(candidates) > 1 else None
    if merged is not None:
        outputs += _split_output(model(merged), len(candidates))
    else:
        for features in candidates:
            out = model(features)
            outputs.append({key: out[key] for key in ("sentence_embedding", "token_embeddings", "attention_mask")})
    for out in outputs:
        if out["token_embeddings"].dim() != 3:
            raise ValueError(
                "The word-level loss needs per-token embeddings of shape (batch, tokens, dim) from the student, "
                f"but got {tuple(out['token_embeddings'].shape)}. Use a Transformer-based SentenceTransformer."
            )
    return outputs


def cat_padded(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate (rows, tokens, ...) tensors along rows, right-padding the token axis with zeros."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]) for t in tensors], dim=0)


def check_columns(loss_name: str, num_columns: int, minimum: int, expected: str, why: str) -> None:
    if num_columns < minimum:
        raise ValueError(
            f"{loss_name} expects at least {minimum} input columns ({expected}), but got {num_columns}. {why}"
        )


def check_teacher_scores(loss_name: str, scores: Tensor, batch_size: int, num_candidates: int, source: str) -> None:
    """Shape and finiteness of the teacher scores (B, N): raise with a fix, never train on garbage."""
    if scores.dim() != 2 or tuple(scores.shape) != (batch_size, num_candidates):
        raise ValueError(
            f"{loss_name} expects teacher scores of shape (batch_size, num_candidates) = ({batch_size}, "
            f"{num_candidates}): one score per candidate column (positive first, then negative_1..n), but the "
            f"{source} has shape {tuple(scores.shape)}. Put a list of {num_candidates} teacher scores per row in "
            "the label column (e.g. `scores`), in the same order as the candidate columns, or drop the label column "
            "and pass `teacher=` to score the pairs online."
        )
    bad = ~torch.isfinite(scores)
    if bad.any():
        rows = sorted({int(i) for i in bad.nonzero()[:, 0].tolist()})[:5]
        raise ValueError(
            f"{loss_name}: the {source} contains {int(bad.sum())} NaN/inf teacher scores (e.g. in batch rows {rows}), "
            "which would make the loss and every gradient NaN. Re-score those pairs, or drop the rows."
        )


def check_teacher_target_scale(loss_name: str, scores: Tensor, temperature: float) -> None:
    """The host's first-batch check of a distillation target: NaN teacher scores raise, and a warning names the
    temperature to raise when ``softmax(scores / temperature)`` underflows to exact zeros."""
    probabilities = torch.softmax(scores.detach().float() / temperature, dim=-1)
    check_teacher_targets(probabilities, scores, temperature, loss_name)


def online_scores(
    teacher: Teacher | None,
    model: nn.Module | StudentTokenizers,
    features_list: Sequence[dict[str, Any]],
    loss_name: str,
) -> tuple[Tensor, list[list[StudentText]]]:
    """Teacher logits (B, N) for the (query, candidate) pairs of a batch, scored online from the decoded texts."""
    if teacher is None:
        raise ValueError(
            f"{loss_name} got no label column and no teacher, so it has no teacher scores. Either add a label column "
            "(e.g. `scores`) with one teacher score per candidate column, or pass `teacher=` (a CrossEncoder, a "
            "Hub id or local folder, or an md2pr_st.teacher.Teacher) to score the pairs online."
        )
    texts = decode_columns(model, features_list)
    scores = torch.as_tensor(teacher.score(teacher_pairs(texts), show_progress_bar=False))
    return scores.reshape(len(texts[0]), len(texts) - 1), texts


def teacher_pairs(texts: Sequence[Sequence[StudentText]]) -> list[tuple[str, str]]:
    """The (query, candidate) pairs of a batch for the teacher, row-major (pair ``b * N + c``: query b, column c),
    from the decoded texts of each column (query column first)."""
    queries, columns = texts[0], texts[1:]
    return candidate_pairs(
        [q.text for q in queries], [[column[b].text for column in columns] for b in range(len(queries))]
    )
