import math

import pytest
import torch

from relayrl.algorithms import advantages


def test_grpo_hand_worked():
    # mean 0.5, unbiased std sqrt(1/3): (1 - 0.5) / 0.57735 = 0.8660
    adv = advantages.grpo(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    # allclose's default rtol 1e-5 (~170 float32 roundings): mean, std and the quotient are a few roundings each
    assert torch.allclose(adv, torch.tensor([[0.8660254, -0.8660254, -0.8660254, 0.8660254]]))


def test_grpo_equal_rewards_give_zero_advantage():
    # exact: the mean of equal rewards is that reward (3 / 3), so every difference is exactly 0
    assert torch.equal(advantages.grpo(torch.tensor([[1.0, 1.0, 1.0]])), torch.zeros(1, 3))


def test_rloo_leave_one_out():
    # sample 0: 1 - mean(0, 0, 1) = 2/3 ; sample 1: 0 - mean(1, 0, 1) = -2/3
    adv = advantages.rloo(torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
    expected = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [3.0, -1.0, -1.0, -1.0]])
    assert torch.allclose(adv, expected)


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError):
        advantages.rloo(torch.tensor([[1.0]]))


def test_reinforce_batch_baseline():
    adv = advantages.reinforce(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert torch.allclose(adv, torch.tensor([[0.25, -0.75], [0.25, 0.25]]))
    # the advantages are binary fractions (+-0.25, 0.75), so they sum to exactly 0; 1e-7 would also hold a few
    # roundings (2^-24 each) of terms <= 1
    assert math.isclose(adv.sum().item(), 0.0, abs_tol=1e-7)


def test_dropping_zero_advantage_rollouts_rescales_the_gradient_only():
    """A group all right adds no gradient; without it the token mean's denominator shrinks, so the gradient is
    the full batch's times (all tokens / kept tokens) and every kept token's advantage is unchanged."""
    from relayrl.algorithms.sequences import to_sequences
    from relayrl.models import TinySize, load_model_and_tokenizer
    from relayrl.rollout import Rollout
    from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Trainer

    def rollout(prompt: int, sample: int, reward: float, length: int) -> Rollout:
        ids = [5 + (prompt * 7 + sample * 3 + i) % 30 for i in range(length)]
        r = Rollout(prompt, sample, [4, 5 + prompt], ids, [-1.0] * length, 0, "", "stop")
        r.reward = reward
        return r

    rollouts = [rollout(0, j, float(j % 2), 3 + j) for j in range(4)] + [rollout(1, j, 1.0, 2) for j in range(4)]
    full, kept = to_sequences(rollouts, "grpo"), to_sequences(rollouts, "grpo", drop_zero=True)
    assert [s.advantages for s in kept] == [s.advantages for s in full[:4]]  # prompt 1's group is all right
    assert all(a == 0.0 for s in full[4:] for a in s.advantages)

    def grads(seqs) -> torch.Tensor:
        model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
        trainer = Trainer(model, OptimConfig(warmup_steps=0), AlgorithmConfig(), tok.pad_token_id)
        trainer.accumulate(seqs)
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    scale = sum(len(s.completion_ids) for s in full) / sum(len(s.completion_ids) for s in kept)
    # the dropped rows add exact zeros (A = 0, kl_coef 0) but change the micro-batch's shapes (matmul blocking), and
    # the normaliser is divided then rescaled: float32 sums of n terms in another order, <= ~n * 2^-24 x the sum
    # of |terms|, n = 42 tokens + 2 layers x 4 * 32 (the longest dot products) = 298, terms of a size <= 2 x max |g|
    g_kept, g_full = grads(kept), grads(full) * scale
    atol = 2 * (42 + 2 * 4 * 32) * 2**-24 * float(g_full.abs().max())
    torch.testing.assert_close(g_kept, g_full, rtol=0, atol=atol)
