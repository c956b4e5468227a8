"""The sentence-transformers internals md2pr-st builds on, imported in this one module.

The losses reuse the host's merged forward over candidate columns, its GradCache machinery and its ``Router``'s
route resolution, and the model card re-renders a loaded model's card; none of this is in the host's public API. ``setup.cfg`` therefore pins the tested major version
(``sentence-transformers>=6.2,<7``), and ``tests/test_host.py`` imports every name below and checks its
behaviour, so a release that moves or changes one fails the test suite instead of a user's training run.
"""

from __future__ import annotations

from typing import Any

from sentence_transformers.base.losses.gradcache import (
    CachedLossMixin,
    RandContext,
    _create_minibatch,
    _get_batch_size,
)
from sentence_transformers.base.losses.merged_forward import embed_columns, merge_feature_batches
from sentence_transformers.base.modules.router import Router

__all__ = [
    "CachedLossMixin",
    "RandContext",
    "Router",
    "batch_size",
    "create_minibatch",
    "embed_columns",
    "forget_loaded_card",
    "merge_feature_batches",
    "router_route",
]


def batch_size(features: dict[str, Any]) -> int:
    """Rows in one column's features (the host's own rule, which knows every modality's inputs)."""
    return _get_batch_size(features)


def create_minibatch(features: dict[str, Any], begin: int, end: int) -> dict[str, Any]:
    """Rows ``begin:end`` of one column's features, as the host's GradCache slices them."""
    return _create_minibatch(features, begin, end)


def router_route(router: Router, features: dict[str, Any]) -> str | None:
    """The route a ``Router`` sends ``features`` to (its ``task`` and ``modality``), as in its own forward."""
    return router._resolve_route(task=features.get("task"), modality=features.get("modality", "text"))


def forget_loaded_card(model: Any) -> None:
    """Make ``model.save`` render its card from its card data instead of writing back the README it was loaded with
    (the host keeps a loaded model's card text and saves it as it was, unless the model was trained since)."""
    if getattr(model, "_model_card_text", None):
        model._model_card_text = None
