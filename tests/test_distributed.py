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


def test_leave_closes_the_process_group_once():
    """`leave` destroys the group (so that no gloo thread is left to the interpreter's teardown); a second call,
    or a call with no group, does nothing. A group made outside `setup` is not the md2pr commands' to leave."""
    from md2pr_st import distributed

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert dist.is_initialized() and not distributed.joined()  # the caller's group, not setup()'s
        distributed.leave()
        assert not dist.is_initialized()
        distributed.leave()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
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


ROWS = {
    "query": ["what is python", "capital of france", "tea or coffee", "why a cat"],
    "positive": ["python is a snake", "paris is the capital city of france", "tea and coffee", "the cat is a pet"],
    "negative_1": ["java island in the sea", "the river of the city", "the ocean", "a dog and a model"],
}


def torchrun(script: str, *args: str, tmp_path, timeout: int = 300) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script]
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-8000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["md2pr", "cached"])
def test_two_processes_give_the_loss_and_gradients_of_one(tiny_model_path, tiny_cross_encoder_path, tmp_path, kind):
    """2 gloo processes, each with half the global batch, both levels online, in-batch negatives gathered across
    the processes: the averaged loss parts and the averaged gradients equal one process's on the whole batch."""
    import json
    from pathlib import Path

    import numpy as np
    from sentence_transformers import SentenceTransformer

    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    worker = str(Path(__file__).parent / "ddp_worker.py")
    out = tmp_path / "ranks.npz"
    torchrun(worker, str(tiny_model_path), str(tiny_cross_encoder_path), kind, str(tmp_path / "rows.json"), str(out),
             tmp_path=tmp_path)  # fmt: skip
    distributed = np.load(out)
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    model.eval()
    # One process, the global batch in the order the ranks' halves are gathered (rank 0's rows, then rank 1's).
    order = [0, 2, 1, 3]
    whole = {column: [values[i] for i in order] for column, values in ROWS.items()}
    loss_class = CachedMD2PRLoss if kind == "cached" else MD2PRLoss
    extra = {"mini_batch_size": 1} if kind == "cached" else {}
    loss = loss_class(model, teacher=Teacher(str(tiny_cross_encoder_path)), beta=1.0, **extra)
    parts = loss([model.preprocess(whole[c]) for c in ("query", "positive", "negative_1")], None)
    sum(parts.values()).backward()
    names = [str(n) for n in distributed["names"]]
    reference = np.array([parts[n].item() for n in names])
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).numpy()
    np.testing.assert_allclose(distributed["parts"], reference, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(distributed["grads"], grads, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_the_drop_in_fit_example_trains_to_the_end_under_two_processes(
    tiny_model_path, tiny_cross_encoder_path, tmp_path
):
    from pathlib import Path

    from test_pipeline import beir_with_splits

    data = beir_with_splits(tmp_path / "data")
    example = str(Path(__file__).resolve().parent.parent / "examples" / "drop_in_fit.py")
    out = torchrun(
        example,
        *("--model", str(tiny_model_path), "--teacher", str(tiny_cross_encoder_path), "--dataset", str(data)),
        *("--max-steps", "2", "--batch-size", "2", "--num-negatives", "1", "--output-dir", str(tmp_path / "fit")),
        tmp_path=tmp_path,
    )
    assert out.count("dev_ndcg@10") == 1  # only rank 0 reports
    assert "'epoch': 0}" not in out and "'train_loss': '0'" not in out  # it trained, as one job
    assert (tmp_path / "fit" / "final" / "model.safetensors").is_file()
