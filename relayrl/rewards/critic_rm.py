"""Critic-RM (arXiv 2411.16646): one model that writes a critique of a response, then scores the response from it.

A causal LM writes the critique after `template` (prompt and response); a scalar head reads the hidden state of
the critique's closing EOS as the reward. The folder is the LM's own Hugging Face folder plus the head
(`reward_head.safetensors`) and `critic_rm.json` (the config it was trained with), so the LM half loads anywhere.
At inference the reward of a response is the mean over M sampled critiques.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from relayrl.generation.sampler import Completion, SamplingConfig, encode_prompt, sample_texts
from relayrl.models import load_tokenizer
from relayrl.training.trainer import Sequence, collate

CRITIC_FILE, HEAD_FILE = "critic_rm.json", "reward_head.safetensors"
SCORES = (0.0, 10.0)  # the range of the 'Score: N' a critique ends with


@dataclass
class CriticConfig:
    """`relayrl rm train kind=critic` (docs/recipes/critic_rm.md); stage 2 trains with the `train` section."""

    template: str = "{prompt}{response}\nCritique:"  # what a critique follows; it ends with 'Score: N' (0..10)
    model: str = ""  # stage 1's critic: a folder or hub id; empty: the reward model's own LM, which stage 2 continues
    warm_steps: int = 600  # relayrl:arithmetic: SFT the critic first on critiques a program writes; 0: none
    warm_lr: float = 3e-3
    pairs: int = 1024  # training pairs critiqued in stage 1 (0: all); the kept ones are stage 2's data
    samples: int = 4  # critiques sampled per response in stage 1
    temperature: float = 1.0  # sampling critiques (stage 1 and inference)
    max_new_tokens: int = 64  # per critique
    critiques: int = 4  # inference: critiques sampled per response, their rewards averaged (M)


def is_critic_rm(path: str) -> bool:
    return (Path(path) / CRITIC_FILE).is_file()


def context_ids(tokenizer: PreTrainedTokenizerBase, template: str, prompt: str, response: str) -> list[int]:
    """The ids a critique of `response` follows."""
    return encode_prompt(tokenizer, template.format(prompt=prompt, response=response))


@torch.no_grad()
def write_critiques(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: list[list[int]],
    cfg: CriticConfig,
    generator: torch.Generator,
    batch: int = 256,
) -> list[Completion]:
    """One sampled critique per context, its ids without the closing EOS (the reward head's pass appends one)."""
    lm.eval()
    sampling, out = SamplingConfig(cfg.max_new_tokens, cfg.temperature), []
    for i in range(0, len(contexts), batch):
        out += sample_texts(lm, tokenizer, contexts[i : i + batch], sampling, generator)
    return [
        dataclasses.replace(c, completion_ids=c.completion_ids[:-1]) if c.finish_reason == "stop" else c for c in out
    ]


class CriticRewardModel(torch.nn.Module):
    """`lm` writes critiques; `head` turns the last hidden state of prompt + response + critique into a reward."""

    def __init__(
        self, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: CriticConfig, max_length: int = 256
    ):
        super().__init__()
        self.lm, self.tokenizer, self.cfg, self.max_length = lm, tokenizer, cfg, max_length
        self.head = torch.nn.Linear(lm.config.hidden_size, 1)

    def context(self, prompt: str, response: str) -> list[int]:
        return context_ids(self.tokenizer, self.cfg.template, prompt, response)

    def critique_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def forward(
        self, contexts: list[list[int]], critiques: list[list[int]], lm_loss: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass over each context + critique + EOS (cut on the left to `max_length`): the rewards, and the
        mean LM loss on the critiques' tokens and EOS (None unless `lm_loss`)."""
        eos, rows = [self.tokenizer.eos_token_id], []
        for context, critique in zip(contexts, critiques, strict=True):
            written = (critique + eos)[: self.max_length - 1]
            rows.append(Sequence(context[max(0, len(context) + len(written) - self.max_length) :], written))
        batch = collate(rows, self.tokenizer.pad_token_id, next(self.parameters()).device)
        ids, attention = batch["input_ids"], batch["attention_mask"]
        hidden = self.lm.base_model(input_ids=ids, attention_mask=attention).last_hidden_state
        last = hidden[torch.arange(len(rows)), attention.sum(-1) - 1]
        rewards = self.head(last.float()).squeeze(-1)
        if not lm_loss:
            return rewards, None
        where = batch["mask"] > 0
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][where]).float()
        return rewards, F.cross_entropy(logits, ids[:, 1:][where])

    @torch.no_grad()
    def sampled_rewards(
        self, responses: list[tuple[str, str]], m: int, generator: torch.Generator, batch: int = 256
    ) -> tuple[torch.Tensor, list[list[int]], list[Completion]]:
        """The rewards of m critiques it samples of each (prompt, response), shape (len(responses), m); and the
        contexts (ids) and critiques, m per response in order."""
        contexts = [self.context(p, r) for p, r in responses for _ in range(m)]
        critiques = write_critiques(self.lm, self.tokenizer, contexts, self.cfg, generator, batch)
        ids = [c.completion_ids for c in critiques]
        self.eval()
        rewards = [self(contexts[i : i + batch], ids[i : i + batch], False)[0] for i in range(0, len(contexts), batch)]
        return torch.cat(rewards).view(len(responses), m), contexts, critiques

    def score(self, prompt: str, response: str, m: int = 0, seed: int = 0) -> tuple[float, int]:
        """The mean reward over m critiques (0: `cfg.critiques`), sampled with `seed`; and the tokens it read and
        wrote for them (test-time scaling counts them)."""
        rewards, contexts, critiques = self.sampled_rewards(
            [(prompt, response)], m or self.cfg.critiques, torch.Generator().manual_seed(seed)
        )
        return rewards.mean().item(), sum(len(c) for c in contexts) + sum(len(c.completion_ids) + 1 for c in critiques)

    def save_pretrained(self, out: Path) -> None:
        self.lm.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(out / HEAD_FILE))
        meta = {"critic": dataclasses.asdict(self.cfg), "max_length": self.max_length}
        (out / CRITIC_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str) -> CriticRewardModel:
        meta = json.loads((Path(path) / CRITIC_FILE).read_text())
        lm = AutoModelForCausalLM.from_pretrained(path)
        model = cls(lm, load_tokenizer(path), CriticConfig(**meta["critic"]), meta["max_length"])
        model.head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))
        return model.eval()
