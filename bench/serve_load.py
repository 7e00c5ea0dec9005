"""Serving under load: 1, 8 and 32 concurrent clients against `relayrl serve`, for the embedded model and
SmolLM2-135M-Instruct, and the server's memory after hostile requests.

Each model is served by its own `relayrl serve` process (default options: batches of up to 32 rows, every core).
At each concurrency C, C client threads send chat requests one after another (a closed loop), C x
`--requests-per-client` in all, each a short arithmetic question with its own seed, `--max-tokens` at most,
temperature 0.7, after two warm-up requests. Reported per model and C: requests/s and completion tokens/s over
the wall time, p50/p99 request latency. Then hostile requests (max_tokens=10^9, n=10^6, a 10 MB body): their
statuses, and the server's peak RSS (VmHWM) before and after them.

    .venv/bin/python bench/serve_load.py [MODEL ...] [--clients 1 8 32] [--requests-per-client 4] [--max-tokens 64]
        [--backends native vllm]

`--backends native vllm` serves each model with each backend in turn (`relayrl serve --backend`), side by side in
one run; top-level `vllm_vs_native` is then the last model's tokens/s on vLLM over natively at the most clients.

MODEL: a builtin, checkpoint or HF folder (default: tiny-llama and the folder of
`relayrl models import smollm2-135m-instruct`). Writes bench/results/serve.json; top-level `throughput_32_vs_1`
is the last model's aggregate tokens/s at 32 clients over 1 client (each model has its own in `models`).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import save

from relayrl.model_import import default_dir


def post(url: str, body: dict | bytes, timeout: float = 600) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def ask(url: str, seed: int, max_tokens: int) -> tuple[float, int]:
    """One chat request: its latency and completion tokens."""
    question = f"What is {seed % 89 + 10} + {seed % 71 + 20}? Answer with the number."
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": seed,
    }
    start = time.perf_counter()
    status, reply = post(url + "/chat/completions", body)
    assert status == 200, reply
    return time.perf_counter() - start, reply["usage"]["completion_tokens"]


def load(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `per_client` requests in turn."""

    def client(c: int) -> list[tuple[float, int]]:
        return [ask(url, c * per_client + i, max_tokens) for i in range(per_client)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in done)
    tokens = sum(n for _, n in done)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "clients": clients,
        "requests": len(done),
        "seconds": wall,
        "requests_per_second": len(done) / wall,
        "tokens_per_second": tokens / wall,
        "completion_tokens": tokens,
        "latency_p50": cuts[49],
        "latency_p99": cuts[98],
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def hostile(url: str) -> dict:
    """Requests that grew the old server to 11.5 GB or hung it: each must be refused at once."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    cases = {
        "max_tokens_1e9": chat | {"max_tokens": 10**9},
        "n_1e6": chat | {"n": 10**6},
        "body_10mb": json.dumps(chat | {"user": "x" * (10 << 20)}).encode(),
    }
    return {name: post(url + "/chat/completions", body)[0] for name, body in cases.items()}


def bench_model(model: str, backend: str, clients: list[int], per_client: int, max_tokens: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ["relayrl.cli", "serve", model, "--port", str(port), "--backend", backend]
    server = subprocess.Popen([sys.executable, "-m", *command])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"relayrl serve {model} did not start") from None
                time.sleep(0.5)
        for seed in range(2):  # warm-up
            ask(url, 10_000 + seed, max_tokens)
        rows = []
        for c in clients:
            rows.append(load(url, c, per_client, max_tokens))
            r = rows[-1]
            print(
                f"{model} ({backend}): {c:>2} clients {r['requests_per_second']:6.2f} req/s"
                f" {r['tokens_per_second']:7.1f} tok/s"
                f" p50 {r['latency_p50']:.2f} s p99 {r['latency_p99']:.2f} s",
                flush=True,
            )
        rss_before = peak_rss_mb(server.pid)
        statuses = hostile(url)
        by_clients = {r["clients"]: r["tokens_per_second"] for r in rows}
        return {
            "model": model,
            "backend": backend,
            "throughput_32_vs_1": by_clients[32] / by_clients[1] if {1, 32} <= by_clients.keys() else None,
            "peak_rss_mb_after_load": rss_before,
            "hostile_statuses": statuses,
            "peak_rss_mb_after_hostile": peak_rss_mb(server.pid),
            "rows": rows,
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=["tiny-llama", str(default_dir("smollm2-135m-instruct"))])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--backends", nargs="+", choices=["native", "vllm"], default=["native"])
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    shape = (args.clients, args.requests_per_client, args.max_tokens)
    results = [bench_model(m, b, *shape) for m in args.models for b in args.backends]
    last = {r["backend"]: r["rows"][-1]["tokens_per_second"] for r in results if r["model"] == args.models[-1]}
    result = {
        "throughput_32_vs_1": results[-1]["throughput_32_vs_1"],
        "vllm_vs_native": last["vllm"] / last["native"] if {"vllm", "native"} <= last.keys() else None,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client,
        "models": results,
    }
    save(result, args.out, "serve")


if __name__ == "__main__":
    main()
