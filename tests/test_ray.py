"""executors=ray on a two-node Ray cluster started on this machine (ray.cluster_utils.Cluster)."""

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from ray import cloudpickle
from ray.cluster_utils import Cluster
from test_training import _metrics

from relayrl.config import load_config
from relayrl.controller import train
from relayrl.executors.ray_actors import RayScorer
from relayrl.executors.ray_config import RayConfig
from relayrl.rewards.verifier import RewardConfig
from relayrl.rollout import Rollout
from relayrl.tracking import read_jsonl


@pytest.fixture(scope="module")
def cluster():
    ray.shutdown()  # a local Ray that a run in another test file of this pytest worker left up, if any
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _ray_run(tiny, tmp_path, name, cluster, **extra) -> Path:
    ray_extra = {
        "executors": "ray",
        "ray.address": cluster.address,
        "ray.generators": 2,
        "ray.generator_cpus": 0.5,
        "ray.reward_workers": 2,
        "ray.reward_cpus": 0.25,
    }
    return train(load_config(None, tiny(tmp_path / name, **(ray_extra | extra))), show_progress=False)


@pytest.mark.parametrize("weight_sync", ["object_store", "broadcast"])
def test_ray_run_on_two_nodes_matches_the_local_run(tiny, tmp_path, cluster, weight_sync):
    local = train(load_config(None, tiny(tmp_path / "local", mode="sync")), show_progress=False)
    on_ray = _ray_run(tiny, tmp_path, "ray", cluster, mode="sync", **{"ray.weight_sync": weight_sync})
    assert _metrics(on_ray) == _metrics(local)
    records = read_jsonl(on_ray / "metrics.jsonl")
    assert {r["replica0_staleness"] for r in records if "replica0_staleness" in r} == {0}
    assert all(r["replica0_tokens_per_second"] > 0 and r["replica1_tokens_per_second"] > 0 for r in records[1:])
    assert records[-1]["reissued_prompts"] == 0
    assert records[-1]["generator_nodes"] == 2  # SPREAD put a replica on each node


def test_async_broadcast_sync_of_lora_adapters_keeps_staleness_bounded(tiny, tmp_path, cluster):
    lora = {"model.lora.rank": 4, "model.lora.alpha": 8}  # replicas load the base and merge each adapter broadcast
    extra = {"ray.weight_sync": "broadcast", **lora}
    run = _ray_run(tiny, tmp_path, "bcast", cluster, mode="async", max_staleness=2, **extra)
    records = read_jsonl(run / "metrics.jsonl")
    assert len(records) == 6 and records[-1]["dropped_stale"] == 0
    assert all(0 <= r["staleness"] <= 2 for r in records)  # a replica may sample with a newer version, never older
    # the adapters of 2 layers x 7 projections of 32 x 32 (the MLP's 32 x 128): rank 4 x (in + out) each
    adapter = 2 * 4 * (4 * (32 + 32) + 3 * (32 + 128))
    assert {r["sync_bytes"] for r in records} == {4 * adapter}


def _kill_a_generator_once_training_began(run_root: Path, killed: list) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        started = [p for p in run_root.glob("*/metrics.jsonl") if p.read_text().strip()]
        names = [n["name"] for n in ray.util.list_named_actors(all_namespaces=True) if "generator0" in n["name"]]
        if started and names:
            actor = ray.get_actor(names[-1], namespace=None)
            pid = ray.get(actor.pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_killed_generator_is_restarted_and_its_prompts_reissued(tiny, tmp_path, cluster):
    killed: list[int] = []
    root = tmp_path / "killed"
    watcher = threading.Thread(target=_kill_a_generator_once_training_began, args=(root, killed))
    watcher.start()
    # a tiny step takes ~0.05 s: 30 of them (few evaluations and checkpoints between) leave the watcher time to
    # find the actor after the first step's record, even on a busy machine
    long = {"mode": "async", "max_staleness": 2, "steps": 30, "eval_every": 30, "checkpoint_every": 10}
    run = _ray_run(tiny, tmp_path, "killed", cluster, **long)
    watcher.join()
    assert killed, "the generator was never killed"
    records = read_jsonl(run / "metrics.jsonl")
    assert records[-1]["reissued_prompts"] > 0
    assert [r["step"] for r in records] == list(range(1, 31))
    # the reissued batches were sampled again with their own versions and seeds: nothing lost, nothing used twice
    whole = _ray_run(tiny, tmp_path, "whole", cluster, **long)
    assert _metrics(run) == _metrics(whole)


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the reward actors cannot import this test file


def _hangs_on_request(text: str, answer: str) -> float:
    if text == "hang":
        time.sleep(120)
    if text == "raise":
        raise ValueError("a broken verifier")
    return float(text == answer)


def test_reward_pool_times_out_a_hung_verifier_and_goes_on(cluster):
    scorer = RayScorer(RayConfig(reward_workers=2, reward_cpus=0.25), _hangs_on_request, RewardConfig(timeout=3.0))
    rollouts = [
        Rollout(i, 0, [1], [2], [0.0], 0, text, "stop", answer="7")
        for i, text in enumerate(["7", "hang", "8", "raise", "7", "7"])
    ]
    t0 = time.perf_counter()
    counts = scorer.score(rollouts)
    assert time.perf_counter() - t0 < 60
    assert counts == {"reward_timeouts": 1.0, "reward_errors": 1.0, "reward_reissued": 0.0}
    assert [r.reward for r in rollouts] == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert [r.reward_failed for r in rollouts] == [False, True, False, True, False, False]
    assert scorer.score(rollouts[:1]) == {"reward_timeouts": 0.0, "reward_errors": 0.0, "reward_reissued": 0.0}
    scorer.close()


@dataclass
class _DiesOnce:
    """Kills its own process the first time it sees "die", then scores normally."""

    flag: str

    def __call__(self, text: str, answer: str) -> float:
        if text == "die" and not os.path.exists(self.flag):
            Path(self.flag).touch()
            os._exit(1)
        return float(text == answer or text == "die")


def test_a_dead_reward_actor_is_replaced_and_its_rollout_scored_again(cluster, tmp_path):
    scorer = RayScorer(RayConfig(reward_workers=2, reward_cpus=0.25), _DiesOnce(str(tmp_path / "died")), RewardConfig())
    rollouts = [Rollout(i, 0, [1], [2], [0.0], 0, text, "stop", answer="7") for i, text in enumerate(["7", "die", "8"])]
    assert scorer.score(rollouts) == {"reward_timeouts": 0.0, "reward_errors": 0.0, "reward_reissued": 1.0}
    assert [r.reward for r in rollouts] == [1.0, 1.0, 0.0]
    scorer.close()


@pytest.mark.parametrize(("parallel", "placement", "lora"), [("ddp", "disaggregated", 0), ("fsdp2", "colocated", 4)])
def test_data_parallel_ray_trainer_follows_the_local_run(tiny, tmp_path, cluster, parallel, placement, lora):
    """lora > 0: the ranks rebuild the controller's adapters over the base and train them alone."""
    adapters = {"model.lora.rank": lora, "model.lora.alpha": 2 * lora} if lora else {}
    local = train(load_config(None, tiny(tmp_path / "local", mode="sync", **adapters)), show_progress=False)
    ddp = _ray_run(
        tiny,
        tmp_path,
        "ddp",
        cluster,
        mode="sync",
        **{
            "ray.generators": 2,
            "ray.generator_cpus": 0.25,
            "ray.trainer_ranks": 2,
            "ray.trainer_cpus": 0.25,
            "ray.trainer_parallel": parallel,
            "ray.placement": placement,
            "algorithm.kl_coef": 0.0,
            **adapters,
        },
    )
    first_local, first_ddp = read_jsonl(local / "metrics.jsonl")[0], read_jsonl(ddp / "metrics.jsonl")[0]
    assert first_ddp["reward"] == first_local["reward"]  # the same first batch...
    # ...and its loss, on 2 ranks: the same float32 sums in another order (two partial sums, other micro-batches),
    # moved by <= ~n * 2^-24 x the sum of |terms| (worst case). n <= 1000: 4 x 4 rows of <= 16 completion tokens and
    # a short prompt, + 2 layers x 4 * 32 (the longest dot products). A term is w * A * log pi: w ~ 1 (the first
    # step is on policy), |A| <= 1.5 (GRPO over 4 samples: (k - 1) / sqrt(k)), and a sampled token's -log pi
    # averages its distribution's entropy, <= log(83), the tiny vocabulary. The advantages cancel in the loss, so
    # the scale is absolute: 1000 * 2^-24 * 1.5 * log(83) = 4e-4
    loss_atol = 1000 * 2**-24 * 1.5 * math.log(83)
    assert first_ddp["loss"] == pytest.approx(first_local["loss"], rel=0, abs=loss_atol)
    # normwise the gradient is reproduced to ~n * 2^-24 = 6e-5 relative (terms no larger than the entries), and so
    # is its norm (plus ~16 roundings of its own blocked sum of squares): 1e-4
    assert first_ddp["grad_norm"] == pytest.approx(first_local["grad_norm"], rel=1e-4)
    # colocated: both replicas on the controller's node (the head); disaggregated: SPREAD over both nodes
    assert read_jsonl(ddp / "metrics.jsonl")[-1]["generator_nodes"] == (1 if placement == "colocated" else 2)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["steps"] == 6 and (ddp / "checkpoints" / "step_000006").exists()


def test_a_ray_run_whose_episodes_run_code_in_the_sandbox_matches_the_local_run(tiny, tmp_path, cluster):
    """The python tool's calls run in the sandbox inside the generator actors; the episodes, rewards and updates are
    those of the same run in this process."""
    env = {
        "environment.name": "python",
        "sft.steps": 150,
        "task.arithmetic.max_value": 99,
        "rollout.max_new_tokens": 32,
        "steps": 3,
    }
    local = train(load_config(None, tiny(tmp_path / "local", mode="sync", **env)), show_progress=False)
    on_ray = _ray_run(tiny, tmp_path, "ray", cluster, mode="sync", **env)
    assert _metrics(on_ray) == _metrics(local)
    assert all(r["tool_calls"] > 0.5 for r in read_jsonl(on_ray / "metrics.jsonl"))
