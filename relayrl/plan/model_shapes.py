"""A model's shape from what a user has: a size ("8B"), a builtin name, a local folder or a hub id's config."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from relayrl.plan.inputs import ModelShape, PlanError

# Llama 3 shapes (hidden, layers, heads, kv heads, intermediate, vocab, tied): the models LlamaRL trains
LLAMA3 = {
    "1B": (2048, 16, 32, 8, 8192, 128256, True),
    "3B": (3072, 28, 24, 8, 8192, 128256, True),
    "8B": (4096, 32, 32, 8, 14336, 128256, False),
    "70B": (8192, 80, 64, 8, 28672, 128256, False),
    "405B": (16384, 126, 128, 8, 53248, 128256, False),
}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMBT])$", re.IGNORECASE)
SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def decoder(name: str, hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int, tied: bool):
    """A Llama-style decoder (gated MLP, grouped-query attention) with its parameter count worked out."""
    head_dim = hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    params = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
    return ModelShape(name, params, layers, hidden, heads, kv_heads, head_dim, vocab, tied, inter)


def from_size(text: str) -> ModelShape:
    """Llama 3's own shape for its sizes; otherwise a standard one with about that many parameters: 128-wide
    heads, 8 KV heads, MLP 3.5 x hidden, a 32k vocabulary, and hidden = 128 x layers from 1B up (Llama 3 8B's
    and 405B's aspect), 32 x layers below (SmolLM2's)."""
    match = SIZE.match(text.strip())
    if not match:
        raise PlanError(f"model: {text!r} is not a size like 8B or 135M, a builtin, a folder or a hub id")
    key = text.strip().upper()
    if key in LLAMA3:
        return decoder(f"llama3-{key}", *LLAMA3[key])
    params = float(match[1]) * SCALE[match[2].upper()]
    aspect = 128 if params >= 1e9 else 32

    def shape(layers: int) -> ModelShape:
        hidden = max(128, 128 * round(aspect * layers / 128))
        heads = hidden // 128
        return decoder(key, hidden, layers, heads, min(8, heads), 256 * math.ceil(3.5 * hidden / 256), 32000, False)

    return min((shape(layers) for layers in range(2, 200)), key=lambda s: abs(math.log(s.params / params)))


def from_config(name: str, config) -> ModelShape:
    """From a transformers config (AutoConfig) of a dense decoder."""
    try:
        heads = config.num_attention_heads
        hidden = config.hidden_size
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        tied = bool(getattr(config, "tie_word_embeddings", False))
        shape = decoder(
            name,
            hidden,
            config.num_hidden_layers,
            heads,
            kv_heads,
            config.intermediate_size,
            config.vocab_size,
            tied,
        )
    except AttributeError as err:
        raise PlanError(f"model: {name}'s config lacks a field the plan needs ({err})") from None
    if head_dim != hidden // heads:  # e.g. Gemma: attention width differs from the hidden size
        attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
        params = shape.params + shape.layers * (attention - hidden * (hidden // heads) * (2 * heads + 2 * kv_heads))
        shape = dataclasses.replace(shape, params=params, head_dim=head_dim)
    return shape


def resolve(name: str) -> ModelShape:
    """A size, a builtin (tiny-llama, tiny-qwen2, at relayrl's default size), a local folder or a hub id."""
    if SIZE.match(name.strip()):
        return from_size(name)
    from relayrl.models import TINY_ARCHS, TinySize, build_char_tokenizer

    if name in TINY_ARCHS:
        size = TinySize()
        vocab = len(build_char_tokenizer())
        return decoder(name, size.hidden, size.layers, size.heads, size.heads, size.hidden * 4, vocab, True)
    from transformers import AutoConfig

    path = Path(name).expanduser()
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else name)
    except (OSError, ValueError) as err:
        raise PlanError(
            f"model: cannot read a config for {name!r} (a local folder with config.json, a hub id reachable"
            f" from here, a builtin or a size like 8B): {str(err).splitlines()[0]}"
        ) from None
    return from_config(path.name if path.exists() else name, config)
