"""`relayrl serve CHECKPOINT`: a relayrl model behind an OpenAI-compatible chat-completions endpoint.

A real HTTP server (the standard library's threading server) on a local port, answering
`POST /v1/chat/completions` and `GET /v1/models`, so any OpenAI-compatible client, including relayrl's own
LLM-judge rewards, can use a checkpoint as a judge. This module is the HTTP part only: requests become messages
and sampling parameters for the shared `ChatModel` (relayrl/generation/chat.py), served one at a time.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from relayrl.generation.chat import ChatModel
from relayrl.generation.sampler import SamplingConfig


def chat_completion(chat: ChatModel, body: dict, max_new_tokens: int) -> dict:
    """The chat-completions response to a request `body`; a malformed one raises ValueError, TypeError or
    KeyError (400). `max_new_tokens` when the request sets no `max_tokens`."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all("content" in m for m in messages):
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    stop = body.get("stop")
    sampling = SamplingConfig(
        max_new_tokens=int(body.get("max_tokens") or max_new_tokens),
        temperature=float(body.get("temperature", 0.0)),
        top_p=float(body.get("top_p", 1.0)),
        stop_strings=tuple([stop] if isinstance(stop, str) else stop or ()),
    )
    reply = chat.reply(messages, sampling, int(body.get("seed", 0)))
    return {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.name,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason}
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": len(reply.completion_ids),
            "total_tokens": reply.total_tokens,
        },
    }


def make_server(
    chat: ChatModel, host: str = "127.0.0.1", port: int = 8000, max_new_tokens: int = 256
) -> ThreadingHTTPServer:
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
                self._send(200, chat_completion(chat, body, max_new_tokens))
            except (ValueError, TypeError, KeyError) as e:
                self._send(400, {"error": {"message": str(e), "type": "invalid_request_error"}})

        def log_message(self, *args):  # quiet: one line per request is noise in a training log
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve(name_or_path: str, host: str, port: int, max_new_tokens: int) -> None:
    server = make_server(ChatModel(name_or_path), host, port, max_new_tokens)
    print(f"serving {name_or_path} at http://{host}:{server.server_address[1]}/v1/chat/completions (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
