import copy
import dataclasses
import random

import pytest
import torch

from relayrl.algorithms import advantages
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer, micro_batches


def _grpo_batch(seed: int = 0) -> list[Sequence]:
    """Three prompts of different lengths, four samples each of different lengths, one with a loss mask."""
    rng = random.Random(seed)
    seqs = []
    for p in range(3):
        prompt = [rng.randint(5, 30) for _ in range(4 + 3 * p)]
        for _ in range(4):
            n = rng.randint(1, 9)
            mask = [float(rng.random() < 0.7) for _ in range(n)] if p == 1 else None
            seqs.append(
                Sequence(prompt, [rng.randint(5, 30) for _ in range(n)], [-2.0] * n, [rng.gauss(0, 1)] * n, mask)
            )
    return seqs


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("budget", [16384, 24])
def test_shared_prompts_give_the_whole_rows_loss_and_gradients(arch, budget):
    """Each prompt run once, its cache handed to its samples' rows: the same loss, gradients and statistics as
    every row holding its whole prompt, with the KL term's reference model on the same path; a small budget
    splits a prompt's samples over micro-batches."""
    seqs = _grpo_batch()
    results = {}
    for share in (False, True):
        model, tok = load_model_and_tokenizer(arch, TinySize(32, 2, 2), seed=0)
        ref = copy.deepcopy(model).eval()
        with torch.no_grad():  # so the KL term is not zero
            for p in ref.parameters():
                p.add_(0.01 * torch.randn_like(p))
        trainer = Trainer(
            model,
            OptimConfig(warmup_steps=0, micro_batch_tokens=budget, share_prompts=share),
            AlgorithmConfig(kl_coef=0.1),
            tok.pad_token_id,
            temperature=0.7,
            ref_model=ref,
        )
        metrics = trainer.accumulate(seqs)
        results[share] = metrics, torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    (plain, g_plain), (shared, g_shared) = results[False], results[True]
    # The two paths sum the same float32 terms in another order (a prompt's 4 rows' gradients summed through its
    # cache instead of over 4 copies; other attention shapes): a sum of n terms moved by at most ~n * 2^-24 times
    # the sum of |terms| (worst case). n = the 145 tokens of the plain rows (every gradient and metric is a sum
    # over them) + 2 layers x 4 * 32 (each layer's longest dot product, the MLP's) = 401.
    u, n = 2.0**-24, sum(len(s.prompt_ids) + len(s.completion_ids) for s in seqs) + 2 * 4 * 32
    # a gradient entry's terms, summed over the 12 sequences, reach 1.1 (llama) and 1.5 (qwen2) x max |g|
    # (measured): 2 x max |g| is their scale
    torch.testing.assert_close(g_shared, g_plain, rtol=0, atol=2 * n * u * float(g_plain.abs().max()))
    # ratio and k3 terms are >= 0: reordering their mean moves it by <= n * u relative; k3 = exp(d) - d - 1 is also
    # evaluated to ~3 * u absolute per token. The loss's terms w * A * logp + 0.1 * k3 take both signs, |term|
    # averaging 0.38-0.39 (measured): n * u * 0.5 absolute. The token count is exact.
    for k, rel, abs_ in (("loss", 0, n * u * 0.5), ("ratio_mean", n * u, 0), ("kl_mean", n * u, 3 * u)):
        assert shared[k] == pytest.approx(plain[k], rel=rel, abs=abs_), k
    assert shared["trained_tokens"] == plain["trained_tokens"]
    # the model runs each prompt once instead of four times (a split prompt: once per micro-batch)
    prompts, completions = (4 + 7 + 10), sum(len(s.completion_ids) for s in seqs)
    assert plain["computed_tokens"] == 4 * prompts + completions == plain["trained_tokens"]
    if budget == 16384:
        assert shared["computed_tokens"] == prompts + completions


def test_micro_batches_count_a_shared_prompt_once():
    a, b = [1] * 9, [2] * 5  # prefixes of 8 and 4 tokens; rows of 1 + completion
    seqs = [Sequence(a, [3] * 2), Sequence(a, [3] * 3), Sequence(b, [3] * 3), Sequence(b, [3])]
    # 2 rows x 4 + prefix 8 = 16; with the third row 3 x 4 + 2 prefixes x 8 = 28; with all four 4 x 4 + 16 = 32
    assert [len(g) for g in micro_batches(seqs, 20, share_prompts=True)] == [2, 2]
    assert [len(g) for g in micro_batches(seqs, 28, share_prompts=True)] == [3, 1]
    assert [len(g) for g in micro_batches(seqs, 32, share_prompts=True)] == [4]
    assert [len(g) for g in micro_batches(seqs, 28)] == [2, 2]  # whole rows: 2 x 12; then 3 x 12 > 28


def test_reinforce_pp_kl_in_reward_advantages_are_the_whole_batchs_over_micro_batches(monkeypatch):
    """REINFORCE++ with the KL in the reward, its batch split into several micro-batches: every token's advantage is
    the pure function's applied to the whole batch at once (its mean and std over every token, not per part)."""
    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    ref = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=1)[0]  # so the KL is not 0
    algo = AlgorithmConfig(advantage="reinforce_pp", loss="ppo", kl_coef=0.1, kl_in_reward=True)
    optim = OptimConfig(warmup_steps=0, micro_batch_tokens=24, share_prompts=False)
    trainer = Trainer(model, optim, algo, tok.pad_token_id, temperature=0.7, ref_model=ref)
    # rewards -1, 0, 1 on the last token; prompt 1's samples have loss masks with holes
    seqs = [
        dataclasses.replace(s, rewards=[0.0] * (len(s.completion_ids) - 1) + [float(i % 3 - 1)])
        for i, s in enumerate(_grpo_batch())
    ]
    seen = []
    token_loss = Trainer._token_loss

    def spy(self, batch, supervised):
        seen.append(batch)
        return token_loss(self, batch, supervised)

    monkeypatch.setattr(Trainer, "_token_loss", spy)
    trainer.accumulate(seqs)
    assert len(seen) >= 4  # several micro-batches
    # each sequence's row in its micro-batch, found by its tokens: its completion span's per-token fields
    rows = {}
    for batch in seen:
        for ids, attn, *fields in zip(
            batch["input_ids"],
            batch["attention_mask"],
            batch["rewards"],
            batch["mu"] - batch["ref"],
            batch["mask"],
            batch["adv"],
            strict=True,
        ):
            rows[tuple(ids[attn > 0].tolist())] = fields
    assert len(rows) == len(seqs)
    width = max(len(s.completion_ids) for s in seqs)
    whole = {k: torch.zeros(len(seqs), width) for k in ("rewards", "kl", "mask", "adv")}
    for i, s in enumerate(seqs):
        span = slice(len(s.prompt_ids) - 1, len(s.prompt_ids) - 1 + len(s.completion_ids))
        for k, v in zip(whole, rows[tuple(s.prompt_ids + s.completion_ids)], strict=True):
            whole[k][i, : len(s.completion_ids)] = v[span]
    assert (whole["mask"] == 0).any() and whole["kl"].abs().max() > 0.1  # holes in the mask; a KL that counts
    returns = advantages.kl_returns(whole["rewards"], whole["kl"], whole["mask"], 0.1)
    mean, std = advantages.token_statistics(returns, whole["mask"])
    (expected,) = advantages.reinforce_pp_kl([whole["rewards"]], [whole["kl"]], [whole["mask"]], 0.1)
    # the returns are the same float32 sums either way (a row's reversed cumsum over its own tokens, padding adding
    # exact zeros); mean and std are float64 sums in another order (~1e-16 relative) that may round to float32 1 ulp
    # apart where they enter (R - m) / (s + eps): <= 2^-23 (|m| / s + |A|), plus the two float32 roundings of that
    # expression: 4 ulp of (|m| / s + max |A|) bounds it
    atol = 4 * 2.0**-24 * (abs(mean) / std + float(expected.abs().max()))
    torch.testing.assert_close(whole["adv"], expected, rtol=0, atol=atol)
    # a sequence without a reward (spoc's messages carry advantages instead) is refused, not trained on its KL alone
    with pytest.raises(ValueError, match=r"^algorithm\.kl_in_reward: "):
        trainer.accumulate([dataclasses.replace(seqs[0], rewards=None), *seqs[1:]])


def test_a_shared_value_head_on_lora_trains_the_adapters_and_the_head_and_syncs_the_adapters_alone():
    """With LoRA the backbone is the adapted model: the value loss reaches the adapters through it, and the head,
    which is not part of the model, never reaches the generators."""
    from relayrl import adapters

    seqs = [
        dataclasses.replace(s, advantages=None, rewards=[0.0] * (len(s.completion_ids) - 1) + [1.0])
        for s in _grpo_batch()
    ]
    grads = {}
    for coef in (0.1, 0.5):
        model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
        model = adapters.apply(model, adapters.LoraConfig(rank=4, alpha=8.0), "tiny-llama")
        algo = AlgorithmConfig(advantage="gae", loss="ppo", value_model="shared", value_coef=coef)
        trainer = Trainer(model, OptimConfig(warmup_steps=0, share_prompts=False), algo, tok.pad_token_id)
        with torch.no_grad():  # a head of 0 sends the backbone no value gradient
            trainer.value_head.weight.fill_(0.1)
        trainer.accumulate(seqs)
        grads[coef] = torch.cat([p.grad.reshape(-1) for p in adapters.trained_parameters(model)])
        trainer.optimizer.zero_grad()
    # the value loss's weight changes the adapters' gradient: the value loss flows through them
    assert not torch.allclose(grads[0.1], grads[0.5])
    head, synced = trainer.value_head.weight.detach().clone(), trainer.weights().clone()
    trainer.step(seqs)
    assert not torch.equal(trainer.value_head.weight, head) and not torch.equal(trainer.weights(), synced)
    assert synced.numel() == sum(p.numel() for p in adapters.trained_parameters(model))  # the adapters alone
