"""Per-token policy losses and their aggregation.

All take (B, T) tensors: `logp` of the policy being trained, `mu` of the behaviour policy
that sampled the tokens, per-token `adv` (a sequence advantage broadcast, or per message),
and a 0/1 `mask` of the tokens that count.
"""

from __future__ import annotations

import torch


def ppo_clip(logp: torch.Tensor, mu: torch.Tensor, adv: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """-min(r A, clip(r, 1-eps, 1+eps) A) with r = pi/mu."""
    ratio = torch.exp(logp - mu)
    return -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)


def aipo(logp: torch.Tensor, mu: torch.Tensor, adv: torch.Tensor, rho: float) -> torch.Tensor:
    """LlamaRL's AIPO: -min(pi/mu, rho) * A * log pi, the weight held constant, no lower clip."""
    weight = torch.exp(logp - mu).clamp(max=rho).detach()
    return -weight * adv * logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str, total_tokens: int, total_seqs: int
) -> torch.Tensor:
    """Sum the loss of this micro-batch, normalised by the whole batch's size.

    token: every token of the batch weighs the same (sum / total_tokens).
    sequence: every sequence weighs the same (per-sequence token mean, summed / total_seqs).
    Normalising by the global totals makes micro-batches (and data-parallel ranks) add up to
    exactly the full-batch loss.
    """
    masked = per_token * mask
    if mode == "token":
        return masked.sum() / total_tokens
    if mode == "sequence":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / total_seqs
    raise ValueError(f"algorithm.aggregation must be 'token' or 'sequence', got {mode!r}")
