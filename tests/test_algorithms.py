"""The algorithms by name (docs/algorithms.md): hand-worked examples, and each loss's gradient against autograd
through a direct transcription of its paper's objective."""

import copy
import math

import pytest
import torch

from relayrl.algorithms import advantages, losses
from relayrl.algorithms.sequences import to_sequences
from relayrl.algorithms.shaping import Overlong, overlong_penalty
from relayrl.rollout import Rollout

# Float32 hand-worked checks below use allclose's default rtol 1e-5 (~170 float32 roundings) unless said otherwise:
# each value is exp/log/mean of a few inputs, a handful of roundings.


def test_dr_grpo_centres_without_the_std():
    adv = advantages.compute("dr_grpo", torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]))
    # exact: the means (0.5, 2) and differences are binary fractions
    assert torch.equal(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(advantages.compute("dr_grpo", torch.tensor([[3.0], [1.0]])), torch.zeros(2, 1))  # groups of 1


def test_reinforce_pp_normalises_over_the_batchs_tokens():
    rewards, tokens = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    # 8 tokens: mean 7/8; variance (1 * (1/8)^2 + 1 * (7/8)^2 + 6 * (1/8)^2) / 8 = 7/64, std sqrt(7)/8;
    # a reward 1 -> (1/8) / (sqrt(7)/8) = 1/sqrt(7), a reward 0 -> -7/sqrt(7) = -sqrt(7)
    adv = advantages.reinforce_pp(rewards, tokens, eps=0.0)
    assert torch.allclose(adv, torch.tensor([[1, -7.0], [1, 1]]) / math.sqrt(7))
    assert torch.equal(advantages.reinforce_pp(torch.ones(2, 3), torch.ones(2, 3)), torch.zeros(2, 3))  # all equal
    # groups of one sample: the batch is the baseline; population std 0.5 (eps 1e-6 is 2e-6 of it: within rtol)
    single = advantages.compute("reinforce_pp", torch.tensor([[1.0], [0.0], [0.0], [1.0]]))
    assert torch.allclose(single, torch.tensor([[1.0], [-1.0], [-1.0], [1.0]]))


def test_reinforce_pp_baseline_subtracts_the_group_mean_first():
    rewards, tokens = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    # group-centred [[0.5, -0.5], [0, 0]]; over 8 tokens the mean is 0, the variance (0.25 + 0.25) / 8, std 0.25.
    # exact: binary fractions throughout
    assert torch.equal(advantages.reinforce_pp_baseline(rewards, tokens, 0.0), torch.tensor([[2.0, -2.0], [0, 0]]))
    assert torch.equal(advantages.compute("reinforce_pp_baseline", torch.tensor([[1.0], [0.0]])), torch.zeros(2, 1))
    assert torch.equal(advantages.compute("reinforce_pp_baseline", torch.full((2, 3), 0.5)), torch.zeros(2, 3))
    # an all-equal group is centred to 0, but the batch's token mean of centred rewards need not be 0: here
    # (0.5 * 1 - 0.5 * 3) / 8 = -1/8, variance (0.25 + 3 * 0.25) / 8 - 1/64 = 7/64, so it gets (1/8) / (sqrt(7)/8)
    uneven = advantages.reinforce_pp_baseline(rewards, torch.tensor([[1.0, 3.0], [2.0, 2.0]]), 0.0)
    assert torch.allclose(uneven[1], torch.full((2,), 1 / math.sqrt(7)))


def test_kl_returns_hand_worked_with_prompt_padding_and_a_masked_token():
    # row 0: a prompt position, two completion tokens (reward 1 on the last), padding; row 1: a masked token (an
    # environment's reply) between two; the 9s and the 100 are off the mask and never read
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    kl = torch.tensor([[9.0, 1.0, -0.5, 9.0], [-1.0, 100.0, 0.5, 9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    # row 0 per token r - kl: -1, 1.5, so returns 0.5, 1.5; row 1: 1, 0.5, so returns 1.5, (0), 0.5. Exact: binary
    returns = advantages.kl_returns(rewards, kl, mask, 1.0)
    assert torch.equal(returns, torch.tensor([[0.0, 0.5, 1.5, 0.0], [1.5, 0.0, 0.5, 0.0]]))
    # the coefficient scales the KL alone: 0.5 gives per token -0.5, 1.25 -> 0.75, 1.25
    assert torch.equal(advantages.kl_returns(rewards, kl, mask, 0.5)[0], torch.tensor([0.0, 0.75, 1.25, 0.0]))


def test_reinforce_pp_kl_normalises_over_every_token_of_the_batch_however_split():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    kl = torch.tensor([[9.0, 1.0, -0.5, 9.0], [-1.0, 100.0, 0.5, 9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    # the returns above, 0.5 1.5 1.5 0.5 over the 4 tokens: mean 1, population std 0.5; exact with eps 0
    expected = torch.tensor([[0.0, -1.0, 1.0, 0.0], [1.0, 0.0, -1.0, 0.0]])
    (whole,) = advantages.reinforce_pp_kl([rewards], [kl], [mask], 1.0, eps=0.0)
    assert torch.equal(whole, expected)
    # in two parts (micro-batches), the second narrower (padded less): the whole batch's statistics
    parts = advantages.reinforce_pp_kl(
        [rewards[:1], rewards[1:, :3]], [kl[:1], kl[1:, :3]], [mask[:1], mask[1:, :3]], 1.0, 0.0
    )
    assert torch.equal(parts[0], expected[:1]) and torch.equal(parts[1], expected[1:, :3])
    # all-equal returns (equal rewards, no KL) have no spread: 0 on every token, exactly
    flat = advantages.reinforce_pp_kl(
        [torch.tensor([[0.0, 1.0], [0.0, 1.0]])], [torch.zeros(2, 2)], [torch.ones(2, 2)], 0.1
    )
    assert torch.equal(flat[0], torch.zeros(2, 2))
    # a group of one sample with the baseline: its centred reward is 0, so only the KL to go moves it (returns -0.5
    # then -0.25; the other row's 1, 1), against the mean and population std over the 4 tokens (eps 1e-6 moves the
    # result by 1.4e-6 relative to std 0.69: within allclose's rtol)
    centred = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    (one,) = advantages.reinforce_pp_kl([centred], [torch.tensor([[1.0, 1.0], [0.0, 0.0]])], [torch.ones(2, 2)], 0.25)
    returns = torch.tensor([[-0.5, -0.25], [1.0, 1.0]])
    assert torch.allclose(one, (returns - returns.mean()) / returns.std(correction=0))


def test_ppo_clip_higher_and_dual_clip_hand_worked():
    logp, mu = torch.log(torch.tensor([1.25, 1.25, 0.7])), torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, -1.0])
    # 1.25 with A=+1: under 1 + 0.28, unclipped (a symmetric 0.2 would cap it at 1.2); with A=-1: min(-1.25, -1.25);
    # 0.7 with A=-1: clipped up to 0.8, min(-0.7, -0.8) = -0.8
    assert torch.allclose(losses.ppo_clip(logp, mu, adv, 0.2, 0.28), torch.tensor([-1.25, 1.25, 0.8]))
    assert torch.allclose(losses.ppo_clip(logp, mu, adv, 0.2), torch.tensor([-1.2, 1.25, 0.8]))
    logp = torch.log(torch.tensor([5.0, 5.0, 2.0])).requires_grad_()
    adv = torch.tensor([-1.0, 1.0, -1.0])
    # r=5, A=-1: min(-5, -1.2) = -5, floored at 3 * -1; r=5, A=+1: 1.2 (no floor for A > 0); r=2, A=-1: -2 > -3
    loss = losses.ppo_clip(logp, torch.zeros(3), adv, 0.2, dual_clip=3.0)
    assert torch.allclose(loss, torch.tensor([3.0, -1.2, 2.0]))
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([0.0, 0.0, 2.0]))  # d(-rA)/dlogp = -rA = 2; the floor and clip: 0


def test_gspo_uses_the_length_normalised_sequence_ratio():
    logp = torch.log(torch.tensor([[2.0, 1.0], [0.5, 9.0]])).requires_grad_()
    mu, mask = torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    # s_0 = (2 * 1)^(1/2) = sqrt(2), clipped to 1.2 under A=+1; s_1 = 0.5 (its masked token ignored): min(-0.5, -0.8)
    assert torch.allclose(losses.sequence_ratio(logp, mu, mask), torch.tensor([[math.sqrt(2)], [0.5]]))
    loss = losses.gspo(logp, mu, adv, mask, 0.2, 0.2)
    assert torch.allclose(loss * mask, torch.tensor([[-1.2, -1.2], [0.8, 0.0]]))
    (loss * mask).sum().backward()
    assert torch.equal(logp.grad, torch.zeros(2, 2))  # both sequences clipped: no gradient (exact zeros)


def test_cispo_keeps_a_gradient_on_clipped_tokens():
    logp = torch.log(torch.tensor([3.0, 0.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -2.0])
    # weights clip(r, 1 - 1, 1 + 0.28): 1.28, 0.5 (no lower bound), 1.1; held constant, so d/dlogp = -w A
    loss = losses.cispo(logp, torch.zeros(3), adv, 1.0, 0.28)
    assert torch.allclose(loss, -torch.tensor([1.28, 0.5, -2.2]) * logp.detach())
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([-1.28, -0.5, 2.2]))  # PPO would give the first token 0


def test_importance_weights_truncate_or_mask_per_token_or_sequence():
    log_ratio = torch.log(torch.tensor([[3.0, 0.5, 1.5], [1.2, 1.5, 7.0]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 7 is masked: weight exp(0) = 1, and no part of
    # its sequence's product (3 * 0.5 * 1.5 = 2.25 and 1.2 * 1.5 = 1.8)
    cases = {
        ("token", "truncate"): [[2.0, 0.5, 1.5], [1.2, 1.5, 1.0]],
        ("token", "mask"): [[0.0, 0.5, 1.5], [1.2, 1.5, 1.0]],
        ("sequence", "truncate"): [[2.0] * 3, [1.8] * 3],
        ("sequence", "mask"): [[0.0] * 3, [1.8] * 3],
    }
    for (level, mode), expected in cases.items():
        weights = losses.importance_weights(log_ratio, mask, level, mode, 2.0)
        assert torch.allclose(weights, torch.tensor(expected)), (level, mode)
    huge = torch.full((1, 10), 100.0)  # a sequence ratio of e^1000 overflows to inf: truncated to C, or masked
    assert losses.importance_weights(huge, torch.ones(1, 10), "sequence", "truncate", 2.0).eq(2.0).all()
    assert losses.importance_weights(huge, torch.ones(1, 10), "sequence", "mask", 2.0).eq(0.0).all()


def test_constant_aggregation_divides_by_the_budget():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # (6 + 4) / (4 * 2): exact in float32
    assert losses.aggregate(per_token, mask, "constant", 4, 2, length=4).item() == 1.25


def test_overlong_penalty_ramps_over_the_buffer():
    # DAPO's R_length with L_max 20, L_cache 5: 0 to 15 tokens, then -(len - 15) / 5, -1 at and past the budget
    assert [overlong_penalty(n, 20, 5) for n in (10, 15, 16, 20, 25)] == [0.0, 0.0, -0.2, -1.0, -1.0]
    assert overlong_penalty(20, 20, 5, factor=0.5) == -0.5 and overlong_penalty(20, 20, 0) == 0.0


def _rollout(prompt: int, sample: int, reward: float, length: int, finish: str = "stop", version: int = 0) -> Rollout:
    r = Rollout(prompt, sample, [4, 5], [6] * length, [-1.0] * length, version, "", finish)
    r.reward = reward
    return r


def test_overlong_shaping_and_filtering_in_the_advantages():
    # both right, one truncated at the budget of 8 with a buffer of 4: shaped rewards 1 and 1 - 1 = 0, so
    # Dr. GRPO gives +-0.5; filtering leaves the truncated one out after its group's advantages are computed
    group = [_rollout(0, 0, 1.0, 3), _rollout(0, 1, 1.0, 8, "length")]
    shaped = to_sequences(group, "dr_grpo", overlong=Overlong(8, buffer=4))
    assert [s.advantages for s in shaped] == [[0.5] * 3, [-0.5] * 8]
    kept = to_sequences(group, "dr_grpo", overlong=Overlong(8, buffer=4, filter=True))
    assert [s.advantages for s in kept] == [[0.5] * 3]
    assert [r.reward for r in group] == [1.0, 1.0]  # the rollouts' own rewards (what is reported) are untouched
    assert [s.advantages for s in to_sequences(group, "dr_grpo")] == [[0.0] * 3, [0.0] * 8]


def test_sequences_carry_their_staleness():
    group = [_rollout(0, 0, 1.0, 2, version=3), _rollout(0, 1, 0.0, 2, version=5)]
    assert [s.staleness for s in to_sequences(group, "grpo", version=5)] == [2, 0]
    assert [s.staleness for s in to_sequences(group, "grpo")] == [0, 0]


# --- gradients against a direct transcription of each objective (float64; see the tolerance below) ---

B, T, V = 3, 4, 5


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (B, T))
    with torch.no_grad():
        mu = _logp(logits, tokens) + 0.3 * torch.randn(B, T, dtype=torch.float64)
    # token ratios 0.78-1.71 and sequence ratios 1.02-1.23 (GSPO's) or 1.08-1.52 (products): each loss below
    # clips some tokens or sequences and not others, and the dual clip (c = 1.5) floors one token
    adv = torch.tensor([[1.0], [-0.5], [-2.0]], dtype=torch.float64).expand(B, T)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    return logits, tokens, mu, adv, mask


def _logp(logits, tokens):
    return logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


def _clip(x, low, high):
    return min(max(x, low), high)


def _direct(name: str, lp, mu, adv, mask) -> torch.Tensor:
    """The papers' objectives token by token in Python, negated; sequence i's tokens are those its mask keeps."""
    seqs = [[t for t in range(T) if mask[i, t]] for i in range(B)]
    n_tokens = sum(map(len, seqs))
    total = 0.0
    for i, ts in enumerate(seqs):
        a = float(adv[i, 0])
        if name == "gspo":  # Zheng et al. eq. 5-7: min(s A, clip(s) A), s = exp(mean log ratio), a mean over sequences
            s = torch.exp(sum(lp[i, t] - mu[i, t] for t in ts) / len(ts))
            total = total - torch.minimum(s * a, s.clamp(0.8, 1.01) * a) / B
            continue
        for t in ts:
            r = torch.exp(lp[i, t] - mu[i, t])
            if name in ("ppo_dapo", "ppo_dual"):  # PPO with clip-higher (DAPO eq. 10), and the dual clip (c = 1.5)
                surrogate = torch.minimum(r * a, r.clamp(0.8, 1.28) * a)
                if name == "ppo_dual" and a < 0:
                    surrogate = torch.maximum(surrogate, torch.tensor(1.5 * a, dtype=torch.float64))
                total = total - surrogate / n_tokens
            elif name == "cispo":  # MiniMax-M1 eq. 4: sg(clip(r)) A log pi over all the batch's tokens
                total = total - _clip(float(r.detach()), 0.0, 1.28) * a * lp[i, t] / n_tokens
            elif name == "dr_grpo":  # Dr. GRPO: PPO's surrogate summed per sequence, / the budget (6), mean over seqs
                total = total - torch.minimum(r * a, r.clamp(0.8, 1.2) * a) / (6 * B)
            elif name == "aipo":  # LlamaRL: min(r, rho) held constant, times A grad log pi, over the batch's tokens
                total = total - min(float(r.detach()), 1.2) * a * lp[i, t] / n_tokens
            elif name == "mis_token":  # token-level MIS on a policy gradient: r A grad log pi where r <= 1.2, else 0
                w = float(r.detach())
                total = total - (w if w <= 1.2 else 0.0) * a * lp[i, t] / n_tokens
            elif name == "tis_seq":  # sequence-level TIS on a policy gradient: min(prod r, 1.2) A grad log pi
                w = min(math.prod(math.exp(float(lp[i, u].detach() - mu[i, u])) for u in ts), 1.2)
                total = total - w * a * lp[i, t] / n_tokens
    return total


def _relayrl(name: str, lp, mu, adv, mask) -> torch.Tensor:
    n_tokens = int(mask.sum())
    if name == "ppo_dapo":
        return losses.aggregate(losses.ppo_clip(lp, mu, adv, 0.2, 0.28), mask, "token", n_tokens, B)
    if name == "ppo_dual":
        return losses.aggregate(losses.ppo_clip(lp, mu, adv, 0.2, 0.28, 1.5), mask, "token", n_tokens, B)
    if name == "gspo":
        return losses.aggregate(losses.gspo(lp, mu, adv, mask, 0.2, 0.01), mask, "sequence", n_tokens, B)
    if name == "cispo":
        return losses.aggregate(losses.cispo(lp, mu, adv, 1.0, 0.28), mask, "token", n_tokens, B)
    if name == "dr_grpo":
        return losses.aggregate(losses.ppo_clip(lp, mu, adv, 0.2), mask, "constant", n_tokens, B, length=6)
    if name == "aipo":
        return losses.aggregate(losses.aipo(lp, mu, adv, 1.2), mask, "token", n_tokens, B)
    # PPO against the trainer's own log-probs (ratio 1), weighted by the engine's masked token ratio or truncated
    # sequence ratio
    level, mode = ("token", "mask") if name == "mis_token" else ("sequence", "truncate")
    weights = losses.importance_weights(lp - mu, mask, level, mode, 1.2)
    return losses.aggregate(losses.ppo_clip(lp, lp.detach(), adv, 0.2) * weights, mask, "token", n_tokens, B)


@pytest.mark.parametrize("name", ["ppo_dapo", "ppo_dual", "gspo", "cispo", "dr_grpo", "aipo", "mis_token", "tis_seq"])
def test_loss_gradient_equals_autograd_through_the_papers_objective(name):
    logits, tokens, mu, adv, mask = _batch()
    (ours,) = torch.autograd.grad(_relayrl(name, _logp(logits, tokens), mu, adv, mask), logits)
    (theirs,) = torch.autograd.grad(_direct(name, _logp(logits, tokens), mu, adv, mask), logits)
    assert ours.abs().max() > 1e-3  # some tokens are not clipped: the comparison is not of zeros
    # float64 (u = 2^-53) on both sides, the same quantities in another order: each gradient entry is a sum of <= 12
    # token terms, each a few dozen roundings from its exact value; 1e-12 relative to the largest entry is ~4500 u
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12 * float(theirs.abs().max()))


# --- in the trainer: the mismatch metrics, behaviour_logprobs and the correction ---


def _tiny_trainer(**algo):
    from relayrl.models import TinySize, load_model_and_tokenizer
    from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Trainer

    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    optim = OptimConfig(warmup_steps=0, share_prompts=False)
    return Trainer(model, optim, AlgorithmConfig(**algo), tok.pad_token_id, temperature=0.7)


def _seqs_with_mu(trainer, offsets: list[float], staleness: list[int]):
    """Six sequences whose mu is the trainer's own log-probs plus `offsets[i]` on every token; in the order the
    trainer sorts them (by length), so its forward sees the very same batch."""
    from relayrl.algorithms.sequences import Sequence
    from relayrl.training.trainer import collate, sequence_logprobs

    seqs = [
        Sequence([4, 5 + i], [6 + (i * 5 + j) % 20 for j in range(2 + i)], None, [1.0 - i / 3] * (2 + i))
        for i in range(6)
    ]
    batch = collate(seqs, trainer.pad_id, trainer.device)
    with torch.no_grad():
        logp = sequence_logprobs(trainer.model, batch["input_ids"], batch["attention_mask"], batch["mask"] > 0, 0.7)
    for i, s in enumerate(seqs):
        s.behaviour_logprobs = (logp[i][batch["mask"][i] > 0] + offsets[i]).tolist()
        s.staleness = staleness[i]
    return seqs


def test_mismatch_metrics_over_current_tokens_and_offpolicy_over_all():
    trainer = _tiny_trainer()
    # rows 0-2 sampled by the current version with mu 0.1 above pi; rows 3-5 one version old, 0.3 below
    seqs = _seqs_with_mu(trainer, [0.1] * 3 + [-0.3] * 3, [0, 0, 0, 1, 1, 1])
    metrics = trainer.accumulate(seqs)
    current, stale = 2 + 3 + 4, 5 + 6 + 7  # completion tokens of rows 0-2 and 3-5
    # the same batch through the same forward, so pi is the one mu was built from up to float32 rounding of the
    # offset's addition (|logp| < 8: 2^-21 absolute per token); 1e-5 absolute is only slack over that
    assert metrics["mismatch_logprob_abs"] == pytest.approx(0.1, abs=1e-5)
    # k3 of KL(mu || pi) on tokens from mu: exp(log pi - log mu) - (log pi - log mu) - 1 at log pi - log mu = -0.1
    # (KL(pi || mu)'s k3 would be exp(0.1) - 0.1 - 1 = 0.00517); its derivative there is < 0.1, so 1e-6 holds
    assert metrics["mismatch_kl"] == pytest.approx(math.exp(-0.1) + 0.1 - 1, abs=1e-6)
    assert metrics["offpolicy_logprob_abs"] == pytest.approx(
        (0.1 * current + 0.3 * stale) / (current + stale), abs=1e-5
    )
    trainer.optimizer.zero_grad()
    stale_only = trainer.accumulate(_seqs_with_mu(trainer, [0.1] * 6, [1] * 6))
    assert "mismatch_logprob_abs" not in stale_only and "mismatch_kl" not in stale_only  # no current tokens
    assert stale_only["offpolicy_logprob_abs"] == pytest.approx(0.1, abs=1e-5)


def _grads(trainer, seqs) -> torch.Tensor:
    trainer.optimizer.zero_grad()
    trainer.accumulate(seqs)
    return torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])


def test_trainer_behaviour_logprobs_ignore_the_engines_mu():
    trainer = _tiny_trainer(loss="ppo", behaviour_logprobs="trainer")
    near, far = _seqs_with_mu(trainer, [0.0] * 6, [0] * 6), _seqs_with_mu(trainer, [0.5, -2, 1, 3, -1, 0.2], [0] * 6)
    # the ratio is exp(logp - logp.detach()) = 1 whatever mu is: the very same float operations, bit for bit
    assert torch.equal(_grads(trainer, near), _grads(trainer, far))


def test_ppo_against_the_trainer_with_token_tis_is_aipo():
    """AIPO is token-level TIS on an on-policy policy gradient: the same gradient as PPO taken against the
    trainer's own log-probs, weighted by min(pi/mu, C) from the engine's mu."""
    offsets = [0.5, -2, 1, 3, -1, 0.2]  # pi/mu from e^-3 to e^2: some weights truncated at 2, some not
    tis = _tiny_trainer(loss="ppo", behaviour_logprobs="trainer", correction="truncate", correction_threshold=2.0)
    aipo = _tiny_trainer(loss="aipo", rho=2.0)
    g_tis, g_aipo = (
        _grads(tis, _seqs_with_mu(tis, offsets, [0] * 6)),
        _grads(aipo, _seqs_with_mu(aipo, offsets, [0] * 6)),
    )
    # the same model and batch; each token's coefficient w * A / N is formed in another order (<= 3 roundings,
    # 2e-7 relative) and backpropagated by the same operations, so each entry moves by <= 2e-7 x the sum of its
    # terms' sizes, which measure ~1.5 x max |g| (as in test_trainer): 1e-6 x max |g| is that with margin
    torch.testing.assert_close(g_tis, g_aipo, rtol=0, atol=1e-6 * float(g_aipo.abs().max()))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["algorithm.loss=gspo"], "algorithm.aggregation"),
        (["algorithm.dual_clip=3"], "algorithm.dual_clip"),
        (["algorithm.loss=ppo", "algorithm.dual_clip=0.5"], "algorithm.dual_clip"),
        (["algorithm.correction=truncate"], "algorithm.correction"),
        (
            ["algorithm.advantage=reinforce", "rollout.samples_per_prompt=1", "algorithm.dynamic_sampling=true"],
            "algorithm.dynamic_sampling",
        ),
        (["algorithm.overlong_buffer=33"], "algorithm.overlong_buffer"),
        (["algorithm.advantage=dr_grpo", "rollout.samples_per_prompt=1"], "rollout.samples_per_prompt"),
        (["algorithm.advantage=reinforce_pp_baseline", "rollout.samples_per_prompt=1"], "rollout.samples_per_prompt"),
        (["algorithm.kl_in_reward=true", "algorithm.kl_coef=0.1"], "algorithm.kl_in_reward"),
        (["algorithm.advantage=gae", "algorithm.drop_zero_advantage=true"], "algorithm.drop_zero_advantage"),
        (["algorithm.advantage=reinforce_pp", "algorithm.kl_in_reward=true"], "algorithm.kl_in_reward"),
        (
            [
                "algorithm.advantage=reinforce_pp",
                "algorithm.kl_in_reward=true",
                "algorithm.kl_coef=0.1",
                "algorithm.drop_zero_advantage=true",
            ],
            "algorithm.drop_zero_advantage",
        ),
        (["algorithm.value_model=shared"], "algorithm.value_model"),
        (["recipe=spoc", "algorithm.advantage=gae"], "algorithm.advantage"),
    ],
)
def test_algorithm_rules_name_the_field(overrides, named):
    from relayrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"^{named}: "):
        load_config(None, overrides)


def test_kl_in_reward_for_reinforce_pp_and_a_shared_value_head_are_valid():
    from relayrl.config import load_config

    for advantage in ("reinforce_pp", "reinforce_pp_baseline"):
        overrides = [f"algorithm.advantage={advantage}", "algorithm.kl_in_reward=true", "algorithm.kl_coef=0.05"]
        assert load_config(None, overrides).algorithm.kl_in_reward
    assert load_config(None, ["algorithm.advantage=gae", "algorithm.value_model=shared"]).algorithm.value_coef == 0.1


def test_every_named_algorithm_is_a_valid_config():
    from relayrl.algorithms.named import NAMED
    from relayrl.config import load_config

    configs = {name: load_config(None, overrides).algorithm for name, overrides in NAMED.items()}
    dapo = configs["dapo"]
    assert (dapo.loss, dapo.clip_eps, dapo.clip_high, dapo.aggregation) == ("ppo", 0.2, 0.28, "token")
    assert dapo.dynamic_sampling and dapo.overlong_buffer > 0 and dapo.kl_coef == 0
    assert (configs["dr_grpo"].advantage, configs["dr_grpo"].aggregation) == ("dr_grpo", "constant")
    assert configs["reinforce_pp_kl"].kl_in_reward and configs["reinforce_pp_kl"].kl_coef > 0
    assert configs["ppo_gae_shared"].value_model == "shared" and configs["ppo_gae"].value_model == "separate"


# --- PPO with a learned value model: GAE, the critic, its checkpoint ---


def test_gae_hand_worked_with_prompt_and_padding_passed_over():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.6, 0.8, 9.0]])  # the 9s are a prompt position and padding: never read
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    # gamma 1, lambda 0.5: deltas 0.6 - 0.5 = 0.1, 0.8 - 0.6 = 0.2, 1 - 0.8 = 0.2 (the value past the end is 0);
    # A = 0.2, 0.2 + 0.5 * 0.2 = 0.3, 0.1 + 0.5 * 0.3 = 0.25 from the end; returns A + V
    adv, ret = advantages.gae(rewards, values, mask, 1.0, 0.5)
    assert torch.allclose(adv, torch.tensor([[0.0, 0.25, 0.3, 0.2, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.0, 0.75, 0.9, 1.0, 0.0]]))
    # lambda 1: the discounted return minus V (0.81, 0.9, 1 at gamma 0.9); lambda 0: the one-step TD error
    adv, _ = advantages.gae(rewards, values, mask, 0.9, 1.0)
    assert torch.allclose(adv, torch.tensor([[0.0, 0.81 - 0.5, 0.9 - 0.6, 1.0 - 0.8, 0.0]]))
    adv, _ = advantages.gae(rewards, values, mask, 0.9, 0.0)
    assert torch.allclose(adv, torch.tensor([[0.0, 0.9 * 0.6 - 0.5, 0.9 * 0.8 - 0.6, 1.0 - 0.8, 0.0]]))
    # a one-token row is r - V; a row with no step is all 0
    one, _ = advantages.gae(
        torch.tensor([[2.0], [5.0]]), torch.tensor([[0.5], [1.0]]), torch.tensor([[1.0], [0.0]]), 1, 1
    )
    assert torch.equal(one, torch.tensor([[1.5], [0.0]]))  # exact: 2 - 0.5


def test_gae_sequences_carry_the_reward_on_the_last_token():
    group = [_rollout(0, 0, 1.0, 3), _rollout(0, 1, 1.0, 8, "length")]
    seqs = to_sequences(group, "gae", overlong=Overlong(8, buffer=4))
    assert [s.rewards for s in seqs] == [[0.0, 0.0, 1.0], [0.0] * 7 + [0.0]]  # 1 - the overlong penalty of 1
    assert all(s.advantages is None for s in seqs)


def test_reinforce_pp_sequences_carry_the_reward_group_centred_for_the_baseline():
    # prompt 0: rewards 1 and 0; prompt 1: all equal (1 and 1). On the last token, for the trainer's KL-in-reward
    # returns: as they are, or minus their group's mean (0.5; 1), exact in binary
    rollouts = [_rollout(0, 0, 1.0, 3), _rollout(0, 1, 0.0, 2), _rollout(1, 0, 1.0, 2), _rollout(1, 1, 1.0, 2)]
    assert [s.rewards for s in to_sequences(rollouts, "reinforce_pp")] == [[0, 0, 1], [0, 0], [0, 1], [0, 1]]
    centred = to_sequences(rollouts, "reinforce_pp_baseline")
    assert [s.rewards for s in centred] == [[0, 0, 0.5], [0, -0.5], [0, 0], [0, 0]]
    assert all(s.rewards is None for s in to_sequences(rollouts, "grpo"))  # only the trainer's returns read them


def _gae_batch(trainer):
    from relayrl.algorithms.sequences import Sequence

    seqs = _seqs_with_mu(trainer, [0.0] * 6, [0] * 6)
    return [
        Sequence(
            s.prompt_ids,
            s.completion_ids,
            s.behaviour_logprobs,
            rewards=[0.0] * (len(s.completion_ids) - 1) + [float(i % 2)],
        )
        for i, s in enumerate(seqs)
    ]


def _value_weights(trainer) -> torch.nn.Module:
    return trainer.critic if trainer.critic is not None else trainer.value_head


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_ppo_gae_gradients_equal_a_direct_transcription(value_model):
    """The policy's gradient is -(1/N) sum_t A_t grad log pi_t on policy (behaviour_logprobs=trainer: the ratio
    is 1), with A from GAE over the values; the value model's is that of (1/N) sum_t (V_t - R_t)^2 / 2. A separate
    critic's loss is a graph of its own (its parameters are not the policy's: the gradients of the sum); a shared
    head's is weighed by value_coef in one loss, its values from the policy's own final hidden states."""
    from relayrl.training.trainer import collate

    algo = {"advantage": "gae", "loss": "ppo", "behaviour_logprobs": "trainer", "gamma": 0.9, "lam": 0.8}
    trainer = _tiny_trainer(**algo, value_model=value_model, value_coef=0.3)  # a separate critic's is not weighed
    seqs = _gae_batch(trainer)
    with torch.no_grad():  # the head starts at 0: give it values to work with (and the backbone a value gradient)
        (trainer.critic.head if value_model == "separate" else trainer.value_head).weight.normal_(0, 0.5)
    params = [*trainer.model.parameters(), *_value_weights(trainer).parameters()]
    trainer.accumulate(seqs)
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    batch = collate(seqs, trainer.pad_id, trainer.device)
    ids, attn, where = batch["input_ids"], batch["attention_mask"], batch["mask"] > 0
    hidden = trainer.model.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
    logp = (trainer.model.lm_head(hidden) / 0.7).log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    shared = value_model == "shared"
    values = trainer.value_head(hidden).squeeze(-1) if shared else trainer.critic(ids, attn, where)
    n, policy, critic = int(where.sum()), 0.0, 0.0
    for i, s in enumerate(seqs):  # GAE by its recursion, row by row, over the row's completion tokens
        lp, v = logp[i][where[i]], values[i][where[i]]
        a, next_v = 0.0, 0.0
        for t in reversed(range(len(s.rewards))):
            value = float(v[t].detach())
            a = s.rewards[t] + 0.9 * next_v - value + 0.9 * 0.8 * a
            next_v = value
            policy = policy - a * lp[t] / n
            critic = critic + 0.5 * (v[t] - (a + value)) ** 2 / n
    (policy + (0.3 if shared else 1.0) * critic).backward()
    theirs = [p.grad for p in params]
    ours, theirs = torch.cat([g.reshape(-1) for g in ours]), torch.cat([g.reshape(-1) for g in theirs])
    assert ours.abs().max() > 0
    # the same weights on the same batch; log-probs by a full log-softmax here, by the chunked gather - logsumexp
    # there, and the per-token coefficients (A_t / N, coef (V_t - R_t) / N) formed in float32 there, in float64
    # Python here: a few roundings, ~1e-6 relative, then backpropagated by the same operations; with the terms of
    # an entry summing to ~1.5 x max |g| (as above), 1e-5 x max |g| holds it with margin
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_the_value_model_learns_and_resumes_exactly_from_its_state(value_model):
    trainer = _tiny_trainer(advantage="gae", loss="ppo", value_lr=1e-2, value_model=value_model)
    seqs = _gae_batch(trainer)
    head = trainer.critic.head if value_model == "separate" else trainer.value_head
    embeddings = trainer.model.get_input_embeddings().weight
    start = embeddings.detach().clone(), head.weight.detach().clone()
    first = [trainer.step(seqs) for _ in range(4)]
    assert first[-1]["value_loss"] < first[0]["value_loss"] and first[0]["value_seconds"] > 0
    assert not torch.equal(embeddings, start[0]) and not torch.equal(head.weight, start[1])  # the policy and the head
    # what generators receive is the policy alone, never the value head
    assert trainer.weights().numel() == sum(p.numel() for p in trainer.model.parameters())
    state = copy.deepcopy(trainer.state_dict())  # as a checkpoint holds it: not the live optimizer's tensors
    resumed = _tiny_trainer(advantage="gae", loss="ppo", value_lr=1e-2, value_model=value_model)
    resumed.model.load_state_dict(trainer.model.state_dict())
    resumed.load_state_dict(state)
    values, again_values = _value_weights(trainer), _value_weights(resumed)
    assert all(torch.equal(a, b) for a, b in zip(values.parameters(), again_values.parameters(), strict=True))
    after, again = trainer.step(seqs), resumed.step(seqs)
    # the same weights, optimizer moments and batch: the same float operations, bit for bit
    assert after["value_loss"] == again["value_loss"] and after["loss"] == again["loss"]
    for get in (lambda t: t.model, _value_weights):
        pairs = zip(get(trainer).parameters(), get(resumed).parameters(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
