"""Weights as one flat tensor: one shared-memory segment to send, one copy to load."""

from __future__ import annotations

import torch
from torch import nn


def flatten(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@torch.no_grad()
def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"weight sync: got {flat.numel()} values for a model of {offset} parameters")
