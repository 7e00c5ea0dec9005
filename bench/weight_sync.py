"""Weight sync, trainer -> generator, for models of about 10M, 100M and 500M parameters (random weights).

Each path is timed end to end, from the trainer's model to the generator's model holding the new weights:
- `broadcast`: relayrl's versioned, bucketed torch.distributed broadcast (gloo, a dedicated group) to a
  generator process, which receives into a spare buffer and then copies it into its model;
- `ray_object_store_flat`: what executors=ray does by default: one flat array put in the object store,
  read zero-copy by a generator actor and copied into its model;
- `ray_state_dict`: the naive way: the trainer's state dict through the Ray object store, `load_state_dict`;
- `memcpy`: one copy of the flat weights in this process: the machine's bound for any sync.

Then the sync share of one training step on the embedded default (`sync_share` in metrics.jsonl), for the
local async default and for executors=ray with each weight path.

    .venv/bin/python bench/weight_sync.py [--sizes 10M 100M 500M] [--repeats 5] [--out bench/results]

Writes `<out>/weight_sync.json` (top-level `broadcast_speedup_500m`: naive state-dict time over broadcast
time at 500M, and `sync_share_default`) and prints a table. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from relayrl.config import load_config
from relayrl.controller import train
from relayrl.executors import weight_sync
from relayrl.executors.weights import flatten, load_flat
from relayrl.tracking import read_jsonl

SIZES = {  # hidden, layers, intermediate, vocab
    "10M": (320, 6, 1024, 8000),
    "100M": (768, 12, 2048, 32000),
    "500M": (1280, 24, 3584, 32000),
}


def build(size: str) -> LlamaForCausalLM:
    h, n, i, v = SIZES[size]
    cfg = LlamaConfig(
        hidden_size=h,
        num_hidden_layers=n,
        intermediate_size=i,
        vocab_size=v,
        num_attention_heads=h // 64,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    return model.to_empty(device="cpu").requires_grad_(False)  # random contents: only the bytes matter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broadcast_rank(rank: int, size: str, repeats: int, bucket_mb: float, ports: tuple[int, int], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", rank=rank, world_size=2)
    pg = weight_sync.init_group(f"127.0.0.1:{ports[1]}", rank, 2)
    model = build(size)
    buffer = torch.empty_like(flatten(model)) if rank else None
    times = []
    for version in range(repeats + 1):  # the first is a warm-up: first-touch page faults, connection set-up
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            weight_sync.send(pg, flatten(model), version, bucket_mb)
        else:
            weight_sync.receive(pg, buffer, bucket_mb)
            load_flat(model, buffer)
        dist.barrier()  # the generator's model holds the version
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps(times[1:]))
    dist.destroy_process_group()


def time_broadcast(size: str, repeats: int, bucket_mb: float) -> list[float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        mp.spawn(_broadcast_rank, args=(size, repeats, bucket_mb, (_free_port(), _free_port()), f.name), nprocs=2)
        return json.loads(Path(f.name).read_text())


@ray.remote(num_cpus=1)
class Receiver:
    def __init__(self, size: str):
        torch.set_num_threads(1)
        self.model = build(size)

    def ready(self) -> None:
        pass

    def load_flat(self, weights: list) -> None:
        load_flat(self.model, torch.from_numpy(ray.get(weights[0])))

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def time_ray(size: str, repeats: int) -> tuple[list[float], list[float]]:
    model, receiver = build(size), Receiver.remote(size)
    ray.get(receiver.ready.remote())  # started: time the transfers only
    flat_times, dict_times = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        ray.get(receiver.load_flat.remote([ray.put(flatten(model).numpy())]))
        flat_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ray.get(receiver.load_state_dict.remote(ray.put(model.state_dict())))
        dict_times.append(time.perf_counter() - t0)
    ray.kill(receiver)
    return flat_times[1:], dict_times[1:]  # without the warm-up


def time_memcpy(size: str, repeats: int) -> list[float]:
    flat = flatten(build(size))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        flat.clone()
        times.append(time.perf_counter() - t0)
    return times[1:]


def sync_share(run_root: Path, overrides: list[str]) -> dict:
    """Mean sync time and its share of the step over a short run of the embedded default."""
    run = train(load_config(None, [f"run_dir={run_root}", *overrides]), show_progress=False)
    records = read_jsonl(run / "metrics.jsonl")[1:]  # the first step carries start-up
    return {
        "overrides": overrides,
        "sync_seconds": statistics.fmean(r["sync_seconds"] for r in records),
        "sync_share": statistics.fmean(r["sync_share"] for r in records),
        "step_seconds": statistics.fmean(r["wait_seconds"] + r["train_seconds"] for r in records),
        "sync_bytes": records[0]["sync_bytes"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES))
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median), after one warm-up")
    p.add_argument("--bucket-mb", type=float, default=64.0)
    p.add_argument("--steps", type=int, default=30, help="RL steps of the embedded default for the sync share")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = {}
    for size in args.sizes:
        n = sum(t.numel() for t in build(size).parameters())
        gb = n * 4 / 1e9
        timings = {
            "memcpy": time_memcpy(size, args.repeats),
            "broadcast": time_broadcast(size, args.repeats, args.bucket_mb),
        }
        timings["ray_object_store_flat"], timings["ray_state_dict"] = time_ray(size, args.repeats)
        rows[size] = {"parameters": n, "gigabytes": gb} | {
            path: {"seconds": statistics.median(t), "gb_per_second": gb / statistics.median(t), "all": t}
            for path, t in timings.items()
        }
        print(size, {k: round(v["seconds"], 3) for k, v in rows[size].items() if isinstance(v, dict)}, flush=True)
    ray.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"steps={args.steps}", "sft.steps=300", "eval_every=1000", "checkpoint_every=1000"]
        shares = {
            "local_async": sync_share(Path(tmp) / "local", base),
            "ray": sync_share(Path(tmp) / "ray", [*base, "executors=ray", "ray.reward_cpus=0.1"]),
            "ray_broadcast": sync_share(
                Path(tmp) / "bcast", [*base, "executors=ray", "ray.reward_cpus=0.1", "ray.weight_sync=broadcast"]
            ),
        }
    big = rows.get("500M") or rows[args.sizes[-1]]
    result = {
        "broadcast_speedup_500m": big["ray_state_dict"]["seconds"] / big["broadcast"]["seconds"],
        "sync_share_default": shares["local_async"]["sync_share"],
        "sync_share_default_ray": shares["ray"]["sync_share"],
        "sync_share_default_ray_broadcast": shares["ray_broadcast"]["sync_share"],
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "sizes": rows,
        "embedded_default": shares,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "weight_sync.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("sizes", "embedded_default")}, indent=2))
    print(f"wrote {out / 'weight_sync.json'}")


if __name__ == "__main__":
    main()
