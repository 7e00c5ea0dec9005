"""Per-token policy losses, the engine-mismatch correction, and their aggregation.

All take (B, T) tensors: `logp` of the policy being trained, `mu` of the behaviour policy
that sampled the tokens, per-token `adv` (a sequence advantage broadcast, or per message),
and a 0/1 `mask` of the tokens that count.
"""

from __future__ import annotations

import torch


def ppo_clip(
    logp: torch.Tensor,
    mu: torch.Tensor,
    adv: torch.Tensor,
    clip_low: float,
    clip_high: float | None = None,
    dual_clip: float = 0.0,
) -> torch.Tensor:
    """-min(r A, clip(r, 1 - low, 1 + high) A) with r = pi/mu (PPO; `clip_high` > `clip_low` is DAPO's clip-higher,
    which leaves room for unlikely tokens to grow). `dual_clip` c > 1 (Ye et al. 2020): for A < 0 the surrogate is
    also floored at c A, so a token whose ratio blew up under a negative advantage cannot dominate the batch."""
    high = clip_low if clip_high is None else clip_high
    ratio = torch.exp(logp - mu)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + high) * adv)
    if dual_clip:
        surrogate = torch.where(adv < 0, torch.maximum(surrogate, dual_clip * adv), surrogate)
    return -surrogate


def sequence_ratio(logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's s = (pi(y)/mu(y))^(1/|y|) = exp(mean of log pi - log mu over the sequence's tokens), as (B, 1)."""
    return torch.exp(((logp - mu) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1))


def gspo(
    logp: torch.Tensor, mu: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip_low: float, clip_high: float
) -> torch.Tensor:
    """GSPO (Zheng et al. 2025) in its GSPO-token form: each token carries s_t = sg(s) pi_t / sg(pi_t), valued s and
    with gradient s grad log pi_t, in PPO's clipped surrogate. With one advantage per sequence and the sequence
    aggregation (each sequence's token mean) it is GSPO's sequence-level objective exactly; it also takes
    per-token advantages."""
    ratio = sequence_ratio(logp, mu, mask).detach() * torch.exp(logp - logp.detach())
    return -torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)


def cispo(logp: torch.Tensor, mu: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """CISPO (MiniMax-M1): -sg(clip(pi/mu, 1 - low, 1 + high)) A log pi. The weight is clipped, not the update, so
    every token keeps a gradient (PPO's clip zeroes those past it); `clip_low` >= 1 leaves no lower bound."""
    weight = torch.exp(logp - mu).clamp(1 - clip_low, 1 + clip_high).detach()
    return -weight * adv * logp


def aipo(logp: torch.Tensor, mu: torch.Tensor, adv: torch.Tensor, rho: float) -> torch.Tensor:
    """LlamaRL's AIPO: -min(pi/mu, rho) * A * log pi, the weight held constant, no lower clip."""
    weight = torch.exp(logp - mu).clamp(max=rho).detach()
    return -weight * adv * logp


def importance_weights(
    log_ratio: torch.Tensor, mask: torch.Tensor, level: str, mode: str, threshold: float
) -> torch.Tensor:
    """Weights that correct for the engine having sampled from mu, not the trainer's pi: per token rho_t = exp(log
    pi_t - log mu_t), or per sequence rho = exp(sum of them) on each of its tokens. truncate: min(rho, C) (TIS,
    Yao et al. 2025); mask: rho where rho <= C, else 0 (MIS: a token or sequence too far off is left out, not
    shrunk). Constant: no gradient flows through them."""
    log_ratio = (log_ratio * mask).detach()
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(mask)
    rho = torch.exp(log_ratio)  # may overflow to inf for a sequence: min and where handle it
    if mode == "truncate":
        return rho.clamp(max=threshold)
    if mode == "mask":
        return torch.where(rho <= threshold, rho, torch.zeros_like(rho))
    raise ValueError(f"algorithm.correction must be 'truncate' or 'mask', got {mode!r}")


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """The critic's regression to the GAE returns: (V - R)^2 / 2 per token. PPO's value clipping (to V_old +- eps)
    is left out: with one update per batch V_old is V itself, so the clip could never bind."""
    return 0.5 * (values - returns) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref), on tokens sampled from pi: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str, total_tokens: int, total_seqs: int, length: int = 0
) -> torch.Tensor:
    """Sum the loss of this micro-batch, normalised by the whole batch's size.

    token: every token of the batch weighs the same (sum / total_tokens; DAPO's token-level loss).
    sequence: every sequence weighs the same (per-sequence token mean, summed / total_seqs; GRPO's).
    constant: per-sequence token sum / `length`, summed / total_seqs (Dr. GRPO): no sequence's length scales its
    tokens' weight, so a long wrong answer is not penalised less per token than a short one.
    Normalising by the global totals makes micro-batches (and data-parallel ranks) add up to
    exactly the full-batch loss.
    """
    masked = per_token * mask
    if mode == "token":
        return masked.sum() / total_tokens
    if mode == "sequence":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / total_seqs
    if mode == "constant":
        return masked.sum() / (length * total_seqs)
    raise ValueError(f"algorithm.aggregation must be 'token', 'sequence' or 'constant', got {mode!r}")
