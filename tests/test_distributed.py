"""The losses under torch.distributed: a DistributedDataParallel student (the host trainer's multi-GPU wrap)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from test_losses import NEGATIVES, POSITIVES, QUERIES, batch_features

from md2pr_st.losses import CachedMD2PRLoss, MD2PRLoss
from md2pr_st.teacher import Teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def one_process_group():
    """A gloo process group of one: enough for DistributedDataParallel to wrap the student as the trainer does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("loss_class", [MD2PRLoss, CachedMD2PRLoss])
def test_a_ddp_wrapped_student_gives_the_same_loss(tiny_model, tiny_cross_encoder_path, one_process_group, loss_class):
    """The trainer replaces loss.model by its DistributedDataParallel wrapper, which has no tokenizer and no modules
    to index: the online teacher (both levels) must still work, and give the loss of the plain model."""
    from torch.nn.parallel import DistributedDataParallel

    teacher = Teacher(str(tiny_cross_encoder_path))
    extra = {"mini_batch_size": 2} if loss_class is CachedMD2PRLoss else {}
    loss = loss_class(tiny_model, teacher=teacher, alpha=1.0, beta=1.0, gather_across_devices=True, **extra)
    tiny_model.eval()  # no dropout: both passes see the same embeddings
    features = batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES)
    with torch.no_grad():
        plain = {k: v.item() for k, v in loss(features, None).items()}
    loss.model = DistributedDataParallel(tiny_model)
    features = batch_features(tiny_model, QUERIES, POSITIVES, NEGATIVES)
    parts = loss(features, None)
    wrapped = {k: v.item() for k, v in parts.items()}
    sum(parts.values()).backward()
    tiny_model.train()
    assert set(wrapped) == {"contrastive", "sentence_level", "word_level"}
    assert wrapped == pytest.approx(plain, rel=1e-5)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters())
