"""A native PyTorch sampler over any HF causal LM, with a KV cache.

Returns completion token ids and the log-probabilities of the sampling policy (logits / T,
before top-p truncation), which the trainer uses as mu in the importance weight pi/mu.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from relayrl.hf_compat import CACHE


@dataclass
class SamplingConfig:
    max_new_tokens: int = 48
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    # called on the decoded text of each unfinished row, like stop strings; True ends the row. Picklable
    # (a module-level function or a small dataclass) so it reaches generator processes, e.g. SpocFormat.
    stop_rule: Callable[[str], bool] | None = None


@dataclass
class Sample:
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    sorted_logits[drop] = float("-inf")
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def distinct(rows: list[list[int]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct rows in order of first appearance, and each row's index among them."""
    index = {r: i for i, r in enumerate(dict.fromkeys(tuple(r) for r in rows))}
    return list(index), [index[tuple(r)] for r in rows]


def encode_prompt(tokenizer, prompt: str | Sequence[dict]) -> list[int]:
    """The one place prompts become ids: plain text with the tokenizer's own special tokens (e.g. BOS),
    or chat messages through the tokenizer's chat template, ending where the assistant's reply begins."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_text(tokenizer, prompt: str | Sequence[dict]) -> str:
    """The prompt as the model reads it (through the chat template), without special tokens: the question a
    judge or reward model is shown."""
    return tokenizer.decode(encode_prompt(tokenizer, prompt), skip_special_tokens=True)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row by inverting the CDF: one uniform per row (multinomial draws one per vocabulary entry,
    a sixth of a SmolLM2 decode step)."""
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def next_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Each row's next token from its logits, already divided by the temperature: the argmax at temperature 0,
    else a draw from the top-p nucleus. The sampler and the server's batching engine both choose with it."""
    if temperature == 0:
        return logits.argmax(-1)
    return _draw((_top_p_filter(logits, top_p) if top_p < 1 else logits).softmax(-1), generator)


def last_logits(model, input_ids, mask, positions, cache) -> torch.Tensor:
    """The float32 logits of each row's last position, the cache extended by `input_ids`: one decoding step."""
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{CACHE: cache},
    )
    return out.logits[:, -1].float()


def left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts as one batch: input ids, attention mask and position ids, padded on the left so that every row's
    next token goes in the last column."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, device=device)
        mask[i, width - len(p) :] = 1
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    decode=None,
) -> list[Sample]:
    """Sample one completion per prompt. `decode(ids) -> str` is needed only for stop strings and the stop rule.

    Each distinct prompt is read once (GRPO samples a prompt several times): its KV cache and first logits are
    copied to the rows that sample it. Finished rows leave the batch (and the KV cache) once they are a quarter
    of it, so the model's work follows the rows still being written."""
    device = next(model.parameters()).device
    unique, copies = distinct(prompts)
    copies = torch.tensor(copies, device=device)
    batch = len(prompts)
    input_ids, mask, positions = left_padded(unique, pad_id, device)
    cache = DynamicCache()
    out_ids = torch.full((batch, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros((batch, cfg.max_new_tokens), device=device)
    lengths = [cfg.max_new_tokens] * batch
    reasons = ["length"] * batch
    rows = torch.arange(batch, device=device)  # the original row of each row still in the batch
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # of the rows in the batch
    temperature = cfg.temperature if cfg.temperature > 0 else 1.0
    for t in range(cfg.max_new_tokens):
        logits = last_logits(model, input_ids, mask, positions, cache) / temperature
        if t == 0:  # from each distinct prompt to its rows
            cache.batch_select_indices(copies)
            logits, mask, positions = logits[copies], mask[copies], positions[copies]
        token = torch.where(done, pad_id, next_tokens(logits, cfg.temperature, cfg.top_p, generator))
        out_ids[rows, t] = token
        out_lp[rows, t] = logits.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
        stopped = ~done & (token == eos_id)
        if cfg.stop_strings or cfg.stop_rule is not None:
            for i in torch.nonzero(~done & ~stopped).flatten().tolist():
                text = decode(out_ids[rows[i], : t + 1].tolist())
                stopped[i] = any(text.endswith(s) for s in cfg.stop_strings) or (
                    cfg.stop_rule is not None and cfg.stop_rule(text)
                )
        for i in torch.nonzero(stopped).flatten().tolist():
            lengths[rows[i]], reasons[rows[i]] = t + 1, "stop"
        done |= stopped
        if done.all():
            break
        input_ids = token[:, None]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        if done.sum() * 4 >= len(rows):  # drop the finished rows: one copy of the cache, then smaller steps
            keep = torch.nonzero(~done).flatten()
            cache.batch_select_indices(keep)
            rows, input_ids, mask, positions = rows[keep], input_ids[keep], mask[keep], positions[keep]
            done = done[keep]
    return [
        Sample(out_ids[i, : lengths[i]].tolist(), out_lp[i, : lengths[i]].tolist(), reasons[i]) for i in range(batch)
    ]


@dataclass
class Completion:
    """A sampled completion as a reader sees it: its text and what it cost in tokens."""

    text: str  # decoded without special tokens
    completion_ids: list[int]
    prompt_tokens: int
    finish_reason: str

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens, as an endpoint's `usage.total_tokens` counts them."""
        return self.prompt_tokens + len(self.completion_ids)


def draw(
    model, tokenizer, prompts: list[list[int]], cfg: SamplingConfig, generator: torch.Generator | None = None
) -> list[Sample]:
    """`sample` from a Hugging Face model, or from a generation engine given a seed drawn from `generator`."""
    if isinstance(model, torch.nn.Module):
        return sample(model, prompts, cfg, tokenizer.eos_token_id, tokenizer.pad_token_id, generator, tokenizer.decode)
    return model.sample(prompts, cfg, int(torch.randint(2**62, (1,), generator=generator)))


def sample_texts(
    model,
    tokenizer,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
) -> list[Completion]:
    """`sample` one completion per prompt and decode it: what evaluation, test-time scaling, judges and serving
    read (training reads `sample`'s ids and log-probabilities instead). `model`: a Hugging Face model, or a
    generation engine (engines.py, e.g. vLLM's), which is given a seed drawn from `generator`."""
    done = draw(model, tokenizer, prompts, cfg, generator)
    return [
        Completion(
            tokenizer.decode(s.completion_ids, skip_special_tokens=True), s.completion_ids, len(p), s.finish_reason
        )
        for p, s in zip(prompts, done, strict=True)
    ]
