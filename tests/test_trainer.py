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
    assert torch.allclose(g_shared, g_plain, atol=1e-6, rtol=1e-4)
    for k in ("loss", "ratio_mean", "kl_mean", "trained_tokens"):
        assert shared[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-7), k
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
