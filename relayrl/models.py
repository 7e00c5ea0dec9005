"""Load any Hugging Face causal LM, or build a tiny one (and its tokenizer) locally.

Builtin names (`tiny-llama`, `tiny-qwen2`) build a fresh, seeded model with a
character-level tokenizer made by `tokenizers`, saved in HF format so every other
code path (from_pretrained, save_pretrained, checkpoints) is the same as for a hub model.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging as hf_logging

from relayrl import adapters

hf_logging.disable_progress_bar()  # our own progress bars are the ones to read

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = string.digits + string.ascii_letters + " +-*/=()?.,:;#<>\n"
TINY_ARCHS = {"tiny-llama": (LlamaConfig, LlamaForCausalLM), "tiny-qwen2": (Qwen2Config, Qwen2ForCausalLM)}


@dataclass
class TinySize:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    max_positions: int = 256


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: arithmetic digits stay aligned with what the model computes."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # "." skips newlines
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_model(arch: str, tokenizer: PreTrainedTokenizerBase, size: TinySize, seed: int) -> PreTrainedModel:
    if arch not in TINY_ARCHS:
        raise ValueError(f"model.name_or_path: unknown builtin {arch!r}; builtins are {sorted(TINY_ARCHS)}")
    config_cls, model_cls = TINY_ARCHS[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 4,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return model_cls(config)


def load_model_and_tokenizer(
    name_or_path: str,
    size: TinySize | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    train_adapter: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A builtin tiny model, or any HF causal LM by hub id or local folder. A LoRA adapter's folder (a checkpoint of
    a run with model.lora) is loaded onto its base model: merged into a plain model, or kept apart to train on."""
    tokenizer = load_tokenizer(name_or_path)
    if name_or_path in TINY_ARCHS:
        return build_tiny_model(name_or_path, tokenizer, size or TinySize(), seed), tokenizer
    path = resolve(name_or_path)
    if (base := adapters.adapter_base(path)) is not None:
        # a builtin base is rebuilt as it was: the same size and seed
        return adapters.load(path, load_model_and_tokenizer(base, size, seed, dtype)[0], train_adapter), tokenizer
    return _pretrained(AutoModelForCausalLM, path, dtype=dtype), tokenizer


def missing_folder(name_or_path: str) -> str | None:
    """Why `name_or_path` names nothing loadable, if that is plain without looking it up: not a builtin, and no
    local folder where a hub id (org/name, one slash, not starting with . / or ~) could not be meant either."""
    if name_or_path in TINY_ARCHS or Path(name_or_path).expanduser().exists():
        return None
    if "/" not in name_or_path:
        builtins = ", ".join(sorted(TINY_ARCHS))
        return f"{name_or_path!r} is neither a local folder, a hub id (org/name) nor a builtin ({builtins})"
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return f"no folder {name_or_path} (a hub id is org/name, and needs network)"
    return None


def resolve(name_or_path: str) -> str:
    """A local folder (`~` expanded; a run's `checkpoints/latest` pointer read) or a hub id; anything else is an
    error naming the field."""
    if problem := missing_folder(name_or_path):
        raise ValueError(f"model.name_or_path: {problem}")
    if name_or_path.startswith("~"):
        name_or_path = str(Path(name_or_path).expanduser())
    if Path(name_or_path).is_file() and Path(name_or_path).name == "latest":  # it names the newest checkpoint
        name_or_path = str(Path(name_or_path).parent / Path(name_or_path).read_text().strip())
    return name_or_path


def _pretrained(auto, name_or_path: str, **kwargs):
    """`auto.from_pretrained` of a folder or hub id; one that cannot be loaded (no network, no such hub model, a
    folder without the files) is one line naming the field, not the hub client's traceback."""
    path = resolve(name_or_path)
    try:
        return auto.from_pretrained(path, **kwargs)
    except OSError as e:
        hub = "" if Path(path).exists() else " (hub ids need network)"
        raise ValueError(f"model.name_or_path: cannot load {name_or_path}{hub}: {str(e).splitlines()[0]}") from None


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The builtin character tokenizer, or the model's own, with a pad token (its EOS if it has none)."""
    if name_or_path in TINY_ARCHS:
        return build_char_tokenizer()
    tokenizer = _pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
