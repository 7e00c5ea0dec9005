import copy
import random

import pytest
import torch

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
