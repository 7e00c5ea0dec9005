"""The `ray` section of the config, apart from Ray itself so that reading a config never imports Ray."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from relayrl.schema import choice, non_negative, positive, setting


@dataclass
class RayConfig:
    """executors=ray: where the actors run and with what (docs/distributed.md)."""

    address: str = ""  # "" starts a local Ray; "auto" or host:port attaches to a running cluster
    generators: int = positive(1)  # generator replicas; batch k goes to replica k mod generators
    generator_cpus: float = non_negative(1.0)
    generator_gpus: float = non_negative(0.0)
    trainer_ranks: int = non_negative(0)  # 0: the trainer runs in the controller; K: K Ray actors, data-parallel (DDP)
    # ddp (a model copy per rank) | fsdp2 (parameters and optimizer state sharded)
    trainer_parallel: str = choice("ddp", "fsdp2")
    trainer_cpus: float = non_negative(1.0)  # per rank
    trainer_gpus: float = non_negative(0.0)  # per rank (CUDA + NCCL: untested here)
    weight_sync: str = choice("object_store", "broadcast")  # broadcast: torch.distributed, a group of its own
    bucket_mb: float = setting(64.0, gt=0, le=2**20)  # broadcast bucket size; a terabyte is past any model
    reward_workers: int = positive(1)
    reward_cpus: float = non_negative(0.25)  # a verifier is mostly idle between batches
    # disaggregated: generators SPREAD over the nodes, trainer ranks in their own placement group | colocated:
    # generators and trainer ranks on the controller's node, sharing it
    placement: str = choice("disaggregated", "colocated")
    spread: bool = True  # disaggregated: SPREAD generators and reward workers over the nodes (else Ray packs them)
    max_restarts: int = non_negative(3)  # per actor: Ray restarts a dead one this many times
    # seconds for every actor to start (resources the cluster lacks: an error)
    start_timeout: float = setting(300.0, gt=0, le=threading.TIMEOUT_MAX)
