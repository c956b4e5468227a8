"""The package root exports the public API, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import md2pr_st

# The package root's public API, pinned: adding or removing a name is a decision, made here too.
PUBLIC_API = set(
    """
    __version__ MD2PRLoss CachedMD2PRLoss SentenceLevelDistillationLoss WordLevelDistillationLoss
    Teacher AttentionRecorder OfflineTeacher QrelsScorer train_teacher FalseNegativeFilter mine_hard_negatives
    RetrievalData load_rag24 load_beir load_splits training_pairs cross_validation_folds
    FaissIndex CorpusEmbeddingCache encode RetrievalEvaluator evaluate_run teacher_rerank
    train_student run_pipeline LossArguments PipelineArguments write_model_card push_to_hub
    """.split()
)


def test_the_public_names_are_pinned():
    assert len(md2pr_st.__all__) == len(PUBLIC_API) and set(md2pr_st.__all__) == PUBLIC_API
    assert set(dir(md2pr_st)) >= PUBLIC_API
    # the library's settings live in the library, not in its command line
    assert md2pr_st._EXPORTS["LossArguments"] == md2pr_st._EXPORTS["PipelineArguments"] == "md2pr_st.config"


def test_every_public_name_resolves_to_its_module_object():
    import importlib

    for name, module in md2pr_st._EXPORTS.items():
        assert getattr(md2pr_st, name) is getattr(importlib.import_module(module), name), name
    assert set(md2pr_st.__all__) == {"__version__", *md2pr_st._EXPORTS}


def test_from_import_of_the_headline_names():
    from md2pr_st import (  # noqa: F401
        FaissIndex,
        FalseNegativeFilter,
        MD2PRLoss,
        RetrievalEvaluator,
        Teacher,
        load_beir,
        load_rag24,
        mine_hard_negatives,
        run_pipeline,
    )


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        md2pr_st.Nope  # noqa: B018


def test_importing_the_package_loads_no_torch():
    code = "import sys, md2pr_st; print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
