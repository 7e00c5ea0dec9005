"""The `ray` section of the config, apart from Ray itself so that reading a config never imports Ray."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RayConfig:
    """executors=ray: where the actors run and with what (docs/distributed.md)."""

    address: str = ""  # "" starts a local Ray; "auto" or host:port attaches to a running cluster
    generators: int = 1  # generator replicas; batch k goes to replica k mod generators
    generator_cpus: float = 1.0
    generator_gpus: float = 0.0
    trainer_ranks: int = 0  # 0: the trainer runs in the controller; K: K Ray actors, data-parallel (DDP)
    trainer_parallel: str = "ddp"  # ddp (a model copy per rank) | fsdp2 (parameters and optimizer state sharded)
    trainer_cpus: float = 1.0  # per rank
    trainer_gpus: float = 0.0  # per rank (CUDA + NCCL: untested here)
    weight_sync: str = "object_store"  # object_store | broadcast (torch.distributed, a group of its own)
    bucket_mb: float = 64.0  # broadcast bucket size
    reward_workers: int = 1
    reward_cpus: float = 0.25  # a verifier is mostly idle between batches
    placement: str = "disaggregated"  # disaggregated: generators SPREAD over the nodes, trainer ranks in their
    # own placement group | colocated: generators and trainer ranks on the controller's node, sharing it
    spread: bool = True  # disaggregated: SPREAD generators and reward workers over the nodes (else Ray packs them)
    max_restarts: int = 3  # per actor: Ray restarts a dead one this many times
    start_timeout: float = 300.0  # seconds for every actor to start (resources the cluster lacks: an error)
