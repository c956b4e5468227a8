"""The sentence-transformers internals that md2pr_st/_host.py imports still exist and still behave as we use them.

setup.cfg accepts sentence-transformers >= 6.2, < 7; a release in that range that moves or changes one of these
must fail here, not in a user's training run.
"""

from __future__ import annotations

import importlib.metadata

import torch
from packaging.requirements import Requirement

from md2pr_st import _host
from md2pr_st.losses._shared import ORIGINAL_TEXTS
from tiny_models import build_tiny_bert


def test_installed_host_version_is_in_the_pinned_range():
    requirement = next(
        Requirement(r)
        for r in importlib.metadata.requires("md2pr-st")
        if Requirement(r).name == "sentence-transformers"
    )
    assert str(requirement.specifier) == "<7,>=6.2"
    assert importlib.metadata.version("sentence-transformers") in requirement.specifier


def test_batch_size_and_minibatch_slice_text_features():
    features = {"input_ids": torch.arange(12).reshape(4, 3), "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    assert _host.batch_size(features) == 4
    part = _host.create_minibatch(features, 1, 3)
    assert torch.equal(part["input_ids"], features["input_ids"][1:3])
    assert torch.equal(part["attention_mask"], features["attention_mask"][1:3])


def test_merged_forward_embeds_each_column_like_separate_forwards(tiny_model, one_torch_thread):
    tiny_model.eval()
    # A loss built earlier on this shared model makes its preprocess keep the texts; the student never sees them.
    columns = [
        {key: value for key, value in tiny_model.tokenize(texts).items() if key != ORIGINAL_TEXTS}
        for texts in (["a cat", "a dog"], ["the sea", "an island far away"])
    ]
    merged = _host.merge_feature_batches(columns)
    assert merged is not None and _host.batch_size(merged) == 4
    with torch.no_grad():
        together = _host.embed_columns(tiny_model, columns)
        alone = [tiny_model(features)["sentence_embedding"] for features in columns]
    assert len(together) == 2
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_router_route_follows_the_task(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    towers = [
        [Transformer(str(build_tiny_bert(tmp_path / f"t{seed}", seed=seed))), Pooling(32, pooling_mode="mean")]
        for seed in (1, 2)
    ]
    router = _host.Router.for_query_document(query_modules=towers[0], document_modules=towers[1])
    SentenceTransformer(modules=[router, Normalize()], device="cpu")
    assert _host.router_route(router, {"task": "query"}) == "query"
    assert _host.router_route(router, {"task": "document"}) == "document"


def test_gradcache_mixin_offers_the_methods_the_cached_loss_overrides_and_calls():
    for name in ("forward_cached", "embed_minibatch", "calculate_loss"):
        assert callable(getattr(_host.CachedLossMixin, name, None)), name
    generator_state = _host.RandContext(torch.zeros(1))
    with generator_state:
        pass


def test_a_loaded_model_keeps_its_card_text_until_forgotten(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    assert getattr(model, "_model_card_text", None)  # the host saves this text back unless told otherwise
    _host.forget_loaded_card(model)
    assert not model._model_card_text
