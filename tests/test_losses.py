import math

import torch

from relayrl.algorithms import losses


def test_ppo_clip_hand_worked():
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5]))
    mu = torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, 1.0])
    # ratio 1.5, A=+1 -> clipped to 1.2; A=-1 -> min(-1.5, -1.2) = -1.5; ratio 0.5, A=+1 -> 0.5
    # allclose's default rtol 1e-5 (~170 float32 roundings): the loss is exp(log x), a few roundings off x
    assert torch.allclose(losses.ppo_clip(logp, mu, adv, 0.2), torch.tensor([-1.2, 1.5, -0.5]))


def test_aipo_truncates_from_above_only_and_holds_weight_constant():
    logp = torch.log(torch.tensor([3.0, 0.1])).requires_grad_()
    mu = torch.zeros(2)
    adv = torch.tensor([1.0, 2.0])
    loss = losses.aipo(logp, mu, adv, rho=2.0)
    # weights: min(3, 2) = 2 ; min(0.1, 2) = 0.1 (no lower clip)
    assert torch.allclose(loss, torch.tensor([-2 * math.log(3.0), -0.1 * 2 * math.log(0.1)]))
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([-2.0, -0.2]))  # d/dlogp = -w*A, no gradient through w


def test_aipo_on_policy_equals_policy_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 10, requires_grad=True)
    tokens = torch.randint(0, 10, (4, 6))
    adv = torch.randn(4, 1).expand(4, 6)
    mask = torch.ones(4, 6)

    def logp():
        return logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)

    aipo = losses.aggregate(losses.aipo(logp(), logp().detach(), adv, rho=2.0), mask, "token", 24, 4)
    (g_aipo,) = torch.autograd.grad(aipo, logits)
    pg = losses.aggregate(-adv * logp(), mask, "token", 24, 4)
    (g_pg,) = torch.autograd.grad(pg, logits)
    # on policy the weight is exp(logp - logp) = exp(0) = 1 exactly, so both are the same float32 operations in the
    # same order (a product by 1 is exact): equal up to allclose's default rtol, and atol 1e-7 is only slack
    assert torch.allclose(g_aipo, g_pg, atol=1e-7)
    assert torch.allclose(aipo, pg)


def test_kl_k3_hand_worked():
    kl = losses.kl_k3(torch.tensor([0.0, 0.3]), torch.tensor([math.log(2.0), 0.3]))
    # exp(log 2) - log 2 - 1 in float32: ~3 roundings of terms <= 2, 4e-7 absolute on 0.31: within rtol 1e-5;
    # the 0 is exact (exp(0) - 0 - 1)
    assert torch.allclose(kl, torch.tensor([2 - math.log(2.0) - 1, 0.0]))


def test_aggregate_token_and_sequence():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # exact: sums of small integers and quotients (10/4, 6/3, 4/1, 6/2) that float32 represents exactly
    assert losses.aggregate(per_token, mask, "token", 4, 2).item() == 2.5  # (1+2+3+4)/4
    assert losses.aggregate(per_token, mask, "sequence", 4, 2).item() == 3.0  # (2 + 4)/2


def test_aggregate_micro_batches_add_up_to_full_batch():
    torch.manual_seed(1)
    per_token, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    tokens = int(mask.sum())
    for mode in ("token", "sequence"):
        full = losses.aggregate(per_token, mask, mode, tokens, 6)
        parts = sum(losses.aggregate(per_token[i : i + 2], mask[i : i + 2], mode, tokens, 6) for i in range(0, 6, 2))
        # the same float32 terms summed in another order: moved by <= ~n * 2^-24 times the sum of |terms|, n the
        # 30 terms (+ a few divisions); both modes are weighted means (weights summing to <= 1), so max |term| bounds
        # the sum of |terms| times its weight. Absolute, since the mean of random signs may be near 0.
        atol = 2 * per_token.numel() * 2**-24 * float(per_token.abs().max())
        torch.testing.assert_close(full, parts, rtol=0, atol=atol)
