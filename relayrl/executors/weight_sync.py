"""Versioned weight sync over torch.distributed: the trainer (rank `src`) broadcasts, generators receive.

The weights travel as one flat tensor in buckets of `bucket_mb`, after a header holding the version and
the element count, over a process group of their own (gloo on CPU, NCCL when the tensors are on CUDA).
A receiver fills a buffer that is not the one its model samples from and swaps only once the last bucket
has arrived, so a half-received version is never sampled.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_group(address: str, rank: int, world_size: int, backend: str = "gloo", timeout_s: float = 300.0):
    """The sync group: a world of its own (`tcp://host:port`), so it never mixes with a trainer's DDP group."""
    store = dist.TCPStore(*_host_port(address), world_size, is_master=rank == 0, timeout=_td(timeout_s))
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, _td(timeout_s))
    return dist.ProcessGroupNCCL(store, rank, world_size)  # untested here: no GPU


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def _td(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def _buckets(flat: torch.Tensor, bucket_mb: float) -> list[torch.Tensor]:
    step = max(1, int(bucket_mb * 2**20) // flat.element_size())
    return [flat[i : i + step] for i in range(0, flat.numel(), step)]


def send(pg, flat: torch.Tensor, version: int, bucket_mb: float = 64.0, src: int = 0) -> int:
    """Broadcast `flat` as version `version`; returns the bytes sent."""
    header = torch.tensor([version, flat.numel()], dtype=torch.int64, device=flat.device)
    pg.broadcast(header, src).wait()
    for bucket in _buckets(flat, bucket_mb):
        pg.broadcast(bucket, src).wait()
    return flat.numel() * flat.element_size()


def receive(pg, into: torch.Tensor, bucket_mb: float = 64.0, src: int = 0) -> int:
    """Fill `into` with the next version broadcast from `src`; returns that version."""
    header = torch.zeros(2, dtype=torch.int64, device=into.device)
    pg.broadcast(header, src).wait()
    version, numel = (int(v) for v in header)
    if numel != into.numel():
        raise ValueError(f"weight sync: the sender has {numel} values, this receiver's model {into.numel()}")
    for bucket in _buckets(into, bucket_mb):
        pg.broadcast(bucket, src).wait()  # writes the received values into `into`'s slice
    return version
