"""`relayrl serve CHECKPOINT`: a relayrl model behind an OpenAI-compatible chat-completions endpoint.

A real HTTP server (the standard library's threading server) on a local port, answering
`POST /v1/chat/completions` and `GET /v1/models`, so any OpenAI-compatible client, including relayrl's own
LLM-judge rewards, can use a checkpoint as a judge. Requests are served one at a time by the relayrl sampler.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from relayrl.generation.sampler import SamplingConfig, encode_prompt, sample
from relayrl.models import load_model_and_tokenizer


class ChatModel:
    """Chat replies from a model: loaded from `name_or_path`, or one already loaded (`model`, `tokenizer`)."""

    def __init__(self, name_or_path: str, max_new_tokens: int = 256, model=None, tokenizer=None):
        self.name, self.max_new_tokens = name_or_path, max_new_tokens
        self.model, self.tokenizer = (model, tokenizer) if model is not None else load_model_and_tokenizer(name_or_path)
        self.model.eval()
        self.lock = threading.Lock()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Through the chat template; a model without one sees the messages' contents, one per line."""
        if self.tokenizer.chat_template:
            return encode_prompt(self.tokenizer, [{"role": m["role"], "content": m["content"]} for m in messages])
        return encode_prompt(self.tokenizer, "\n".join(str(m["content"]) for m in messages))

    def complete(self, body: dict) -> dict:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all("content" in m for m in messages):
            raise ValueError("'messages' must be a non-empty list of {role, content} objects")
        ids = self.prompt_ids(messages)
        cfg = SamplingConfig(
            max_new_tokens=int(body.get("max_tokens") or self.max_new_tokens),
            temperature=float(body.get("temperature", 0.0)),
            top_p=float(body.get("top_p", 1.0)),
            stop_strings=tuple([body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or ()),
        )
        gen = torch.Generator().manual_seed(int(body.get("seed", 0)))
        with self.lock:
            s = sample(
                self.model,
                [ids],
                cfg,
                self.tokenizer.eos_token_id,
                self.tokenizer.pad_token_id,
                gen,
                self.tokenizer.decode,
            )[0]
        text = self.tokenizer.decode(s.completion_ids, skip_special_tokens=True)
        return {
            "id": f"chatcmpl-{time.time_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": s.finish_reason}
            ],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(s.completion_ids),
                "total_tokens": len(ids) + len(s.completion_ids),
            },
        }


def make_server(chat: ChatModel, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": chat.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(200, chat.complete(body))
            except (ValueError, TypeError, KeyError) as e:
                self._send(400, {"error": {"message": str(e), "type": "invalid_request_error"}})

        def log_message(self, *args):  # quiet: one line per request is noise in a training log
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve(name_or_path: str, host: str, port: int, max_new_tokens: int) -> None:
    server = make_server(ChatModel(name_or_path, max_new_tokens), host, port)
    print(f"serving {name_or_path} at http://{host}:{server.server_address[1]}/v1/chat/completions (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
