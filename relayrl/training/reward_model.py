"""Train a scalar reward model with the Bradley-Terry loss: a score head on any causal LM (or a
sequence-classification model), saved as a Hugging Face folder with its held-out pair accuracy. `kind=critic`
trains a Critic-RM instead (training/critic_rm.py), on the same data, model and `train` settings.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import track
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from relayrl import adapters
from relayrl.adapters import LoraConfig
from relayrl.algorithms.reward_losses import bradley_terry
from relayrl.models import TINY_ARCHS, TinySize, build_tiny_model, load_tokenizer, resolve
from relayrl.rewards.critic_rm import CriticConfig
from relayrl.rewards.preference import Pair, PreferenceConfig, load_pairs
from relayrl.schema import choice, positive


@dataclass
class RMTrainConfig:
    steps: int = positive(300)
    batch_size: int = positive(32)  # pairs per step
    lr: float = positive(1e-3)
    max_length: int = positive(256)  # tokens of prompt + response; longer ones are cut on the left
    eval_every: int = positive(100)


@dataclass
class RMModelConfig:
    name_or_path: str = "tiny-llama"  # a builtin, a hub id or a local folder (causal LM or classifier)
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank > 0: train adapters (and the head); saved merged


@dataclass
class RMConfig:
    kind: str = choice("scalar", "critic")  # scalar (Bradley-Terry on prompt + response) | critic (Critic-RM: `critic`)
    seed: int = 0
    output: str = "runs/rm"
    model: RMModelConfig = field(default_factory=RMModelConfig)
    data: PreferenceConfig = field(default_factory=PreferenceConfig)
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)


def load_reward_model(cfg: RMModelConfig, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A one-output sequence classifier: the last token's hidden state -> a scalar reward."""
    tokenizer = load_tokenizer(cfg.name_or_path)
    if cfg.name_or_path in TINY_ARCHS:
        config = build_tiny_model(cfg.name_or_path, tokenizer, TinySize(cfg.hidden, cfg.layers, cfg.heads), seed).config
        config.num_labels = 1
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(config), tokenizer
    model = AutoModelForSequenceClassification.from_pretrained(resolve(cfg.name_or_path), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    return model, tokenizer


def rewards(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_length:] for t in texts]
    width = max(len(i) for i in ids)
    batch = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, i in enumerate(ids):
        batch[row, : len(i)], mask[row, : len(i)] = torch.tensor(i), 1
    return model(input_ids=batch, attention_mask=mask).logits[:, 0].float()


def pair_rewards(model, tokenizer, pairs: list[Pair], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    r = rewards(model, tokenizer, texts, max_length)
    return r[: len(pairs)], r[len(pairs) :]


@torch.no_grad()
def pair_accuracy(model, tokenizer, pairs: list[Pair], max_length: int, batch_size: int = 64) -> float:
    """Share of pairs whose chosen response gets the higher reward."""
    model.eval()
    right = 0
    for i in range(0, len(pairs), batch_size):
        chosen, rejected = pair_rewards(model, tokenizer, pairs[i : i + batch_size], max_length)
        right += int((chosen > rejected).sum())
    return right / len(pairs)


def train_reward_model(cfg: RMConfig, show_progress: bool = True) -> dict:
    """Train, evaluate, save to `cfg.output`; returns the metrics also written to metrics.json there."""
    train_pairs, heldout, skipped = load_pairs(cfg.data)
    model, tokenizer = load_reward_model(cfg.model, cfg.seed)
    if cfg.model.lora.rank:
        model = adapters.apply(model, cfg.model.lora, cfg.model.name_or_path, "SEQ_CLS")
    t = cfg.train
    optimizer = torch.optim.AdamW(adapters.trained_parameters(model), lr=t.lr)
    rng = random.Random(cfg.seed)
    history = [{"step": 0, "heldout_pair_accuracy": pair_accuracy(model, tokenizer, heldout, t.max_length)}]
    for step in track(range(1, t.steps + 1), description="reward model", disable=not show_progress):
        model.train()
        chosen, rejected = pair_rewards(model, tokenizer, rng.sample(train_pairs, t.batch_size), t.max_length)
        loss = bradley_terry(chosen, rejected)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % t.eval_every == 0 or step == t.steps:
            acc = pair_accuracy(model, tokenizer, heldout, t.max_length)
            history.append({"step": step, "loss": loss.item(), "heldout_pair_accuracy": acc})
    out = Path(cfg.output)
    model = adapters.merged_model(model)  # a plain classifier folder, as reward.model loads it
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    metrics = {
        "heldout_pair_accuracy": history[-1]["heldout_pair_accuracy"],
        "heldout_pair_accuracy_start": history[0]["heldout_pair_accuracy"],
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout),
        "skipped_rows": skipped,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
