import math

import pytest
import torch

from relayrl.algorithms import advantages


def test_grpo_hand_worked():
    # mean 0.5, unbiased std sqrt(1/3): (1 - 0.5) / 0.57735 = 0.8660
    adv = advantages.grpo(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    assert torch.allclose(adv, torch.tensor([[0.8660254, -0.8660254, -0.8660254, 0.8660254]]))


def test_grpo_equal_rewards_give_zero_advantage():
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
    assert math.isclose(adv.sum().item(), 0.0, abs_tol=1e-7)
