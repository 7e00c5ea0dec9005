"""`relayrl serve MODEL`: the model, a batching backend (the native engine, or vLLM's) and the app, run by uvicorn."""

from __future__ import annotations

import torch
import uvicorn

from relayrl.generation.chat import ChatModel
from relayrl.generation.engines import GenerationConfig
from relayrl.serving.app import ServeConfig, make_app
from relayrl.serving.backend import Backend


def make_backend(chat: ChatModel, generation: GenerationConfig, max_batch: int, max_kv_tokens: int) -> Backend:
    if generation.backend == "vllm":
        from relayrl.serving.vllm_backend import VllmBackend  # vLLM is imported only by servers that use it

        return VllmBackend(chat.model, chat.tokenizer, generation, max_batch)
    from relayrl.serving.engine import Engine

    return Engine(chat.model, chat.tokenizer, max_batch, max_kv_tokens)


def serve(
    model: str,
    host: str,
    port: int,
    cfg: ServeConfig,
    max_batch: int,
    max_kv_tokens: int,
    threads: int = 0,
    generation: GenerationConfig | None = None,
) -> None:
    """`threads`: torch's threads for the model (0: torch's default, every core)."""
    if threads:
        torch.set_num_threads(threads)
    chat = ChatModel(model)
    backend = make_backend(chat, generation or GenerationConfig(), max_batch, max_kv_tokens)
    print(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        uvicorn.run(make_app(chat, backend, cfg), host=host, port=port, log_level="warning")
    finally:
        backend.close()
