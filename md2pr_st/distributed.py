"""Several processes for one stage: the corpus encoding, the teacher's scoring and the evaluation split across the
processes that ``torchrun`` or ``accelerate launch`` started, on ``torch.distributed`` (the engine the host's trainer
uses).

Launched with ``WORLD_SIZE > 1`` in the environment, :func:`setup` joins the process group (``nccl`` with CUDA, else
``gloo``) and pins each process to its ``LOCAL_RANK``'s GPU. Inside :func:`shared_work` (the ``md2pr`` commands and
:func:`~md2pr_st.pipeline.run_pipeline` open it) every process runs the same stage: each encodes its share of every
corpus chunk and scores its share of the teacher's pairs, the shares are gathered so that every process holds the
whole result, and only the main process writes files. Outside it, encoding and scoring stay local to the process
that calls them (a script that evaluates on rank 0 alone keeps working). Python objects travel over a ``gloo``
group, so that no GPU memory holds them. Without a launcher nothing changes: one process does everything.

Example:
    >>> rank(), world_size(), is_main()  # not launched: one process
    (0, 1, True)
    >>> shard_bounds(10)  # this process's share of 10 items
    (0, 10)
    >>> gather_shards(["a", "b"])  # one process: its own share, as a list
    ['a', 'b']
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)
T = TypeVar("T")
_OBJECT_GROUP: Any = None
_JOINED = False  # whether setup() made the default group (then this process's md2pr command owns it)
_SHARED = contextvars.ContextVar("md2pr_shared_work", default=False)


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def shared_work() -> Iterator[None]:
    """Within the block, every launched process runs the same code, so encoding and teacher scoring are split
    across them (collectives: each process must make the same calls)."""
    token = _SHARED.set(True)
    try:
        yield
    finally:
        _SHARED.reset(token)


def sharing() -> bool:
    """True inside :func:`shared_work` on more than one process: encoding and scoring are split across them."""
    return _SHARED.get() and active()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def setup() -> bool:
    """Join the process group a launcher set up (``WORLD_SIZE > 1`` in the environment); True when distributed.

    Idempotent, and a no-op without a launcher. With CUDA, each process uses the GPU of its ``LOCAL_RANK``.
    """
    global _JOINED
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        _JOINED = True
        logger.info("Process %d of %d joined the %s process group.", dist.get_rank(), dist.get_world_size(), backend)
    return active()


def joined() -> bool:
    """True when :func:`setup` made the process group (not a launcher's script or another library before it)."""
    return _JOINED and dist.is_available() and dist.is_initialized()


def leave() -> None:
    """Leave the process group: every process waits for the others, then the group is destroyed.

    Call it last, on every process, once the work is done (the ``md2pr`` commands do, when they made the group:
    :func:`joined`). A process that exits with the group still open leaves ``gloo``'s worker threads to the
    interpreter's teardown, which now and then aborts it ("terminate called without an active exception", exit
    code -6) after all its work is written. A no-op when not distributed, and when called twice.

    Example:
        >>> leave()  # not launched: nothing to leave
        >>> active()
        False
    """
    global _OBJECT_GROUP, _JOINED
    if not (dist.is_available() and dist.is_initialized()):
        _OBJECT_GROUP, _JOINED = None, False  # destroyed elsewhere: no handle to it is kept
        return
    if dist.get_world_size() > 1:
        dist.barrier(group=_object_group())
    if _OBJECT_GROUP is not None:
        dist.destroy_process_group(_OBJECT_GROUP)
        _OBJECT_GROUP = None
    rank = dist.get_rank()
    dist.destroy_process_group()
    _JOINED = False
    logger.info("Process %d left the process group.", rank)


def _object_group() -> Any:
    """A ``gloo`` group for Python objects (the default group when it is already ``gloo``)."""
    global _OBJECT_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _OBJECT_GROUP is None:
        _OBJECT_GROUP = dist.new_group(backend="gloo")
    return _OBJECT_GROUP


def shard_bounds(n: int) -> tuple[int, int]:
    """``(start, stop)`` of this process's contiguous share of ``n`` items: the first ``n % world`` processes take
    one item more, so the shares concatenate back to ``range(n)`` in rank order."""
    size, extra = divmod(n, world_size())
    start = rank() * size + min(rank(), extra)
    return start, start + size + (1 if rank() < extra else 0)


def gather_shards(shard: Sequence[T]) -> list[T]:
    """Every process's ``shard`` concatenated in rank order, on every process (the shard itself, as a list, when
    not distributed). The inverse of :func:`shard_bounds`."""
    if not active():
        return list(shard)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, list(shard), group=_object_group())
    return [item for part in parts for item in part]


def broadcast(value: T) -> T:
    """The main process's ``value``, on every process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_object_group())
    return box[0]


def main_only(context: Any) -> Any:
    """``context`` (e.g. an output lock) on the main process, a context that does nothing on the others."""
    return context if is_main() else contextlib.nullcontext()


def barrier() -> None:
    """Wait until every process gets here (a no-op when not distributed)."""
    if active():
        dist.barrier(group=_object_group())
