"""Weights as one flat tensor: one shared-memory segment to send, one copy to load."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, PretrainedConfig

Parameters = nn.Module | Iterable[torch.Tensor]
"""A model (all its parameters) or some of them (e.g. `adapters.trained_parameters`)."""


def _listed(params: Parameters) -> list[torch.Tensor]:
    return list(params.parameters() if isinstance(params, nn.Module) else params)


def flatten(params: Parameters) -> torch.Tensor:
    """Every parameter in one tensor; sharded (FSDP2) ones gathered whole, a collective every rank joins."""
    return torch.cat([whole(p).detach().reshape(-1) for p in _listed(params)])


def whole(p: torch.Tensor) -> torch.Tensor:
    """A parameter or gradient whole: a DTensor shard gathered (collective), anything else as it is."""
    return p.full_tensor() if isinstance(p, DTensor) else p


@torch.no_grad()
def load_flat(params: Parameters, flat: torch.Tensor) -> None:
    offset = 0
    for p in _listed(params):
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"weight sync: got {flat.numel()} values for a model of {offset} parameters")


def parameter_shapes(model_config: PretrainedConfig) -> list[tuple[str, torch.Size]]:
    """(name, shape) of each parameter of the model `model_config` builds, in `flatten`'s order (tied weights once),
    from a model on the meta device: no memory, no weights."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return [(n, p.shape) for n, p in model.named_parameters()]
