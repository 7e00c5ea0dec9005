"""`relayrl serve MODEL`: the model, the native batching engine and the app, run by uvicorn."""

from __future__ import annotations

import torch
import uvicorn

from relayrl.generation.chat import ChatModel
from relayrl.serving.app import ServeConfig, make_app
from relayrl.serving.engine import Engine


def serve(
    model: str, host: str, port: int, cfg: ServeConfig, max_batch: int, max_kv_tokens: int, threads: int = 0
) -> None:
    """`threads`: torch's threads for the model (0: torch's default, every core)."""
    if threads:
        torch.set_num_threads(threads)
    chat = ChatModel(model)
    engine = Engine(chat.model, chat.tokenizer, max_batch, max_kv_tokens)
    print(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        uvicorn.run(make_app(chat, engine, cfg), host=host, port=port, log_level="warning")
    finally:
        engine.close()
