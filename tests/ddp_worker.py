"""One rank of a 2-process run (launched by tests/test_distributed.py with torchrun): the MD2PR loss on this rank's
half of a global batch, the student wrapped in DistributedDataParallel as the host's trainer wraps it."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.distributed as dist
from sentence_transformers import SentenceTransformer
from torch.nn.parallel import DistributedDataParallel

from md2pr_st import distributed
from md2pr_st.losses import CachedMD2PRLoss, MD2PRLoss
from md2pr_st.teacher import Teacher


def main(student_path: str, teacher_path: str, kind: str, rows_path: str, out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    rows = json.loads(open(rows_path).read())
    mine = {column: values[rank::world] for column, values in rows.items()}  # this rank's rows
    model = SentenceTransformer(student_path, device="cpu")
    model.eval()  # no dropout: every process computes what the single-process reference computes
    loss_class = CachedMD2PRLoss if kind == "cached" else MD2PRLoss
    extra = {"mini_batch_size": 1} if kind == "cached" else {}
    loss = loss_class(model, teacher=Teacher(teacher_path), beta=1.0, gather_across_devices=True, **extra)
    # What the host's trainer does under torchrun / accelerate launch: a SentenceTransformer is not a transformers
    # PreTrainedModel, so it is wrapped with find_unused_parameters=True. That setting also matters for correctness:
    # the losses run the model twice per step (the query column, then the candidate columns), and plain DDP
    # (find_unused_parameters=False, static_graph=False) then averages the wrong gradients without an error.
    loss.model = DistributedDataParallel(model, find_unused_parameters=True)
    features = [model.preprocess(mine[column]) for column in ("query", "positive", "negative_1")]
    parts = loss(features, None)
    sum(parts.values()).backward()  # DDP averages the gradients over the processes
    values = torch.stack([parts[k].detach() for k in sorted(parts)])
    dist.all_reduce(values)
    if rank == 0:  # only rank 0 writes
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).numpy()
        np.savez(out_path, parts=(values / world).numpy(), names=np.array(sorted(parts)), grads=grads)
    distributed.leave()  # both ranks wait for each other, then close the group before the interpreter's teardown


if __name__ == "__main__":
    main(*sys.argv[1:])
