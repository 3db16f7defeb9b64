"""Weight sync without a full-model blob: learner rank 0 streams the policy to every rollout engine in buckets.

Learner rank 0 and the engines form their own collective group (rank 0 = the learner, ranks 1.. = engines), made
from a TCP store, so it needs none of the processes' default groups: gloo on CPU, NCCL on GPU, the same code path.
Every learner rank walks the state dict in the same order (each ``full_tensor()`` is an FSDP all-gather); rank 0
packs the full tensors into flat buckets of ``bucket_mb`` and broadcasts each; an engine turns each received bucket
into ``(name, tensor)`` views and feeds them to vLLM's ``reload_weights`` as they arrive. Peak extra memory is one
bucket on each side; nothing passes through the driver or Ray's object store.

A plan (``plan_buckets``) is plain data, ``[[dtype, numel, [[name, shape, offset, numel], ...]], ...]``, so it
crosses Ray and vLLM's RPC unchanged.
"""
from __future__ import annotations

import datetime
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")


def plan_buckets(specs: Iterable[tuple[str, tuple[int, ...]]], dtype: str, bucket_mb: float) -> list:
    """Group tensors (in order) into buckets of at most ``bucket_mb`` MiB; a larger tensor gets a bucket of its own.

    >>> plan_buckets([("a", (2, 3)), ("b", (4,)), ("c", (8,))], "float32", 40 / 2**20)
    [['float32', 10, [['a', [2, 3], 0, 6], ['b', [4], 6, 4]]], ['float32', 8, [['c', [8], 0, 8]]]]
    """
    limit = max(1, int(bucket_mb * 2**20) // torch.empty(0, dtype=getattr(torch, dtype)).element_size())
    buckets, entries, used = [], [], 0
    for name, shape in specs:
        numel = int(torch.Size(shape).numel())
        if entries and used + numel > limit:
            buckets.append([dtype, used, entries])
            entries, used = [], 0
        entries.append([name, list(shape), used, numel])
        used += numel
    if entries:
        buckets.append([dtype, used, entries])
    return buckets


def plan_bytes(plan: list) -> int:
    """Bytes one weight push sends under ``plan`` (``plan_buckets``)."""
    return sum(numel * torch.empty(0, dtype=getattr(torch, dtype)).element_size() for dtype, numel, _ in plan)


def make_store(url: str, rank: int, world_size: int, timeout: datetime.timedelta):
    """The store behind a rendezvous URL (``driver.network.rendezvous``): ``file://PATH`` (a local run: no socket)
    or ``tcp://HOST:PORT`` (rank 0 hosts it)."""
    if url.startswith("file://"):
        store = dist.FileStore(url[len("file://"):], world_size)
        store.set_timeout(timeout)
        return store
    if url.startswith("tcp://"):
        host, port = url[len("tcp://"):].rsplit(":", 1)
        return dist.TCPStore(host, int(port), world_size, is_master=rank == 0, timeout=timeout,
                             wait_for_workers=False)
    raise ValueError(f"rendezvous must be file://PATH or tcp://HOST:PORT, got {url!r}")


def open_group(url: str, rank: int, world_size: int, backend: str, timeout_s: float = 600.0):
    """A process group of its own, met at ``url`` (:func:`make_store`); returns ``(store, group)`` (keep both
    alive)."""
    if backend not in BACKENDS:
        raise ValueError(f"weight sync backend must be one of {BACKENDS}, got {backend!r}")
    timeout = datetime.timedelta(seconds=timeout_s)
    store = make_store(url, rank, world_size, timeout)
    prefixed = dist.PrefixStore("weight_sync", store)
    if backend == "gloo":
        group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    else:
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        group = dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
    return store, group


def reopen_group(old, url: str, rank: int, world_size: int, backend: str, timeout_s: float = 600.0):
    """:func:`open_group`, after aborting ``old`` (the ``(store, group)`` this process opened before, or None): the
    group is reopened when an engine was restarted, and an NCCL communicator with a dead peer is aborted rather than
    left to its destructor, which can wait on that peer."""
    if old is not None:
        abort = getattr(old[1], "abort", None)
        if abort is not None:
            abort()
    return open_group(url, rank, world_size, backend, timeout_s)


def _broadcast(group, buf: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([buf], opts).wait()


def send(group, plan: list, tensors: Iterator[tuple[str, torch.Tensor]], device) -> int:
    """Rank 0: pack ``tensors`` (in plan order, names checked) into each bucket and broadcast it; returns bytes sent.
    ``group`` None: consume ``tensors`` only (the other learner ranks, whose all-gathers the iteration drives).

    A broadcast that fails (an engine died mid-push) stops the broadcasting, not the iteration: rank 0 still walks
    every tensor, so the other ranks' all-gathers complete instead of waiting for it, and raises at the end."""
    sent, failed = 0, None
    for dtype, numel, entries in plan:
        live = group is not None and failed is None
        buf = torch.empty(numel, dtype=getattr(torch, dtype), device=device) if live else None
        for name, shape, offset, n in entries:
            got, tensor = next(tensors)
            if got != name:
                raise RuntimeError(f"weight sync: expected {name!r} from the learner, got {got!r}")
            if buf is not None:
                buf[offset: offset + n].copy_(tensor.reshape(-1))
        if live:
            try:
                _broadcast(group, buf)
                sent += buf.numel() * buf.element_size()
            except RuntimeError as e:  # gloo and NCCL raise a peer's death as RuntimeError (DistBackendError)
                failed = e
    if failed is not None:
        raise RuntimeError(f"weight sync: a broadcast to the engines failed after {sent} bytes ({failed}); "
                           "the learner ranks finished the push together") from failed
    if sent:
        settle(device)
    return sent


def settle(device) -> None:
    """Wait for ``device``'s queued work. An NCCL broadcast's ``wait()`` returns to the host once the transfer is
    queued on the GPU, so without this a push's seconds (``time/sync``) counted the queueing, not the transfer."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def receive(group, plan: list, device) -> Iterator[tuple[str, torch.Tensor]]:
    """Engine: each bucket as it arrives, cut into ``(name, tensor)`` views."""
    for dtype, numel, entries in plan:
        buf = torch.empty(numel, dtype=getattr(torch, dtype), device=device)
        _broadcast(group, buf)
        for name, shape, offset, n in entries:
            yield name, buf[offset: offset + n].view(shape)
