"""Ray executors: generator replicas, reward workers and data-parallel trainer ranks as Ray actors, behind
the same calls as the local executors (docs/distributed.md).

Ray places, restarts and supervises the actors; relayrl only keeps the order. Every generate call names
the weight version it must sample with (and carries a reference to those weights in the object store), so
a batch's version is fixed by the controller's schedule, not by which replica took it or when: a Ray run
gives the local run's metrics for the same seed. A replica that dies is restarted by Ray (`max_restarts`);
the calls it lost are sent again, with their versions, and counted (`reissued_prompts`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass

import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
from transformers import AutoModelForCausalLM

from relayrl.adapters import LoraConfig, apply, base_of, base_parameters, is_adapted, trained_parameters
from relayrl.errors import TrainingError
from relayrl.executors import weight_sync
from relayrl.executors.generator import GenerateRequest, GeneratorSpec, GeneratorWorker
from relayrl.executors.ray_config import RayConfig
from relayrl.executors.weights import flatten, load_flat
from relayrl.generation.engines import engine_environment
from relayrl.rewards.verifier import RewardConfig, RewardError, RewardFn, assign_result, reward_args, takes_prompt
from relayrl.rollout import Rollout
from relayrl.training.trainer import Sequence, Trainer


def connect(cfg: RayConfig) -> None:
    """Attach to `cfg.address`, or start a local Ray of this run's own; a no-op when this process is connected.

    "local", not None: with None Ray attaches to whatever cluster was started last on the machine (another
    run's, or a test's), and that cluster's shutdown would kill this run's actors."""
    if not ray.is_initialized():
        ray.init(address=cfg.address or "local", include_dashboard=False, log_to_driver=False)


def _options(cfg: RayConfig, cpus: float, gpus: float = 0.0, placed: bool = False) -> dict:
    """Actor options; `placed` actors (generators, trainer ranks) follow `ray.placement`."""
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_restarts": cfg.max_restarts,
        "max_task_retries": 0,  # relayrl reissues lost calls itself, so it can count them and keep their order
        "scheduling_strategy": _here() if placed and cfg.placement == "colocated" else "SPREAD" if cfg.spread else None,
    }


def _here() -> NodeAffinitySchedulingStrategy:
    """The controller's node, where colocated executors share the devices."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _wait_ready(actors: list, what: str, cfg: RayConfig) -> None:
    try:
        ray.get([a.node.remote() for a in actors], timeout=cfg.start_timeout)
    except RayActorError as e:
        raise TrainingError(f"ray: a {what} actor died while starting: {str(e).splitlines()[0]}") from None
    except GetTimeoutError:
        raise TrainingError(
            f"ray: {what} did not start within ray.start_timeout={cfg.start_timeout}s; the cluster has "
            f"{ray.available_resources()} free: lower ray.{what}_cpus / ray.{what}_gpus or the replica count"
        ) from None


def _fetch(ref: ray.ObjectRef) -> torch.Tensor:
    """Weights from the object store as a tensor, without a copy; they are only read."""
    with warnings.catch_warnings():  # the store's array is read-only; torch warns that it is not writable
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(ray.get(ref))


def _free_address() -> str:
    """host:port of a free port on this node, for a torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("", 0))
        return f"{ray.util.get_node_ip_address()}:{s.getsockname()[1]}"


class _Actor:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()


class GeneratorActor(_Actor):
    """A GeneratorWorker in a Ray actor, loading the version each call names before it samples.

    With the broadcast weight path, `receive` runs on a thread of its own (concurrency group "sync") into a
    spare buffer while `generate` samples; the buffers swap only when a version is complete, and `generate`
    loads the newest complete version (never older than the one it names) before a batch, never during one.
    """

    def __init__(self, spec: GeneratorSpec, threads: int, offload: bool):
        torch.set_num_threads(threads)
        # a GPU, when Ray gave this actor one (ray.generator_gpus); colocated, the engine sleeps between batches
        self.worker = GeneratorWorker(spec, "cuda" if torch.cuda.is_available() else "cpu")
        self.offload = offload and torch.cuda.is_available()  # untested here: no GPU
        if self.offload:
            self.worker.engine.sleep()
        self.received = threading.Condition()
        self.front, self.front_version = None, -1
        self.numel = self.worker.received_numel

    def join_sync(self, address: str, rank: int, world: int, bucket_mb: float) -> None:
        self.pg, self.bucket_mb = weight_sync.init_group(address, rank, world), bucket_mb
        self.back = torch.empty(self.numel)
        self.front = torch.empty_like(self.back)

    @ray.method(concurrency_group="sync")
    def receive(self) -> int:
        version = weight_sync.receive(self.pg, self.back, self.bucket_mb)
        with self.received:
            self.front, self.back, self.front_version = self.back, self.front, version
            self.received.notify_all()
        return version

    def generate(self, req: GenerateRequest, version: int, weights: list | None) -> tuple[list[Rollout], float]:
        if self.offload:
            self.worker.engine.wake()
        try:
            if weights is None:  # broadcast: wait for that version (or a newer one) to be complete
                with self.received:
                    self.received.wait_for(lambda: self.front_version >= version)
                    if self.worker.version != self.front_version:
                        self.worker.load(self.front, self.front_version)
            elif self.worker.version != version:
                self.worker.load(_fetch(weights[0]), version)
            return self.worker.generate(req)
        finally:
            if self.offload:
                self.worker.engine.sleep()  # the colocated trainer gets the GPU back


@dataclass
class _Call:
    req: GenerateRequest
    replica: int
    version: int
    weights: list | None  # [ObjectRef], so Ray hands over the reference and the actor fetches only a new version;
    # None: the version comes by broadcast
    future: ray.ObjectRef | None = None


class RayGenerator:
    """N generator replicas as Ray actors, behind LocalGenerator's four calls (plus `stats`)."""

    def __init__(self, cfg: RayConfig, spec: GeneratorSpec, threads: int = 1):
        connect(cfg)
        actor = ray.remote(concurrency_groups={"sync": 1})(GeneratorActor)
        options = _options(cfg, cfg.generator_cpus, cfg.generator_gpus, placed=True)
        if variables := engine_environment(spec.generation, threads):  # read when the actor's process starts
            options["runtime_env"] = {"env_vars": variables}
        run = uuid.uuid4().hex[:8]  # named, so an operator (or a test) can find a replica: ray.util.list_named_actors()
        self.actors = [
            actor.options(**options, name=f"relayrl-{run}-generator{i}").remote(
                spec, threads, cfg.placement == "colocated"
            )
            for i in range(cfg.generators)
        ]
        _wait_ready(self.actors, "generator", cfg)
        self.nodes = ray.get([a.node.remote() for a in self.actors])
        self.cfg, self.weights, self.inflight = cfg, None, deque()
        self.reissued_prompts = 0
        self.tokens, self.seconds = [0] * len(self.actors), [0.0] * len(self.actors)
        self.pg, self.receiving = self._join_sync() if cfg.weight_sync == "broadcast" else None, []

    def _join_sync(self):
        """A sync group: this process (rank 0, the sender) and every replica."""
        address, world = _free_address(), len(self.actors) + 1
        joined = [a.join_sync.remote(address, i + 1, world, self.cfg.bucket_mb) for i, a in enumerate(self.actors)]
        pg = weight_sync.init_group(address, 0, world)
        ray.get(joined)
        return pg

    def publish(self, flat: torch.Tensor | ray.ObjectRef, version: int) -> None:
        """Weights from a local trainer (a tensor), or from a RayTrainer (already in the object store)."""
        if self.pg is None:
            ref = flat if isinstance(flat, ray.ObjectRef) else ray.put(flat.detach().numpy())  # numpy: read zero-copy
            self.weights = (version, [ref])
            return
        ray.get(self.receiving)  # the previous version is complete everywhere (and a receiver's error surfaces)
        if isinstance(flat, ray.ObjectRef):
            flat = _fetch(flat).clone()  # a writable tensor of its own for the process group
        self.receiving = [a.receive.remote() for a in self.actors]
        weight_sync.send(self.pg, flat.detach(), version, self.cfg.bucket_mb)
        self.weights = (version, None)

    def submit(self, req: GenerateRequest) -> None:
        call = _Call(req, req.batch_index % len(self.actors), *self.weights)
        self._send(call)
        self.inflight.append(call)

    def _send(self, call: _Call) -> None:
        call.future = self.actors[call.replica].generate.remote(call.req, call.version, call.weights)

    def collect(self) -> tuple[list[Rollout], float]:
        call = self.inflight.popleft()
        while True:
            try:
                rollouts, seconds = ray.get(call.future)
                break
            except RayActorError:  # Ray restarts the replica: send the lost call again, once it is back
                if self.pg is not None:
                    raise TrainingError(
                        f"generator replica {call.replica} died; with ray.weight_sync=broadcast its sync group "
                        "cannot be re-formed: continue with relayrl train --resume RUN_DIR, or use "
                        "ray.weight_sync=object_store"
                    ) from None
                self._await_restart(call.replica)
                self.reissued_prompts += len(call.req.prompt_indices)
                self._send(call)
        for r in rollouts:
            r.replica = call.replica
        self.tokens[call.replica] += sum(len(r.completion_ids) for r in rollouts)
        self.seconds[call.replica] += seconds
        return rollouts, seconds

    def _await_restart(self, replica: int) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout
        while time.monotonic() < deadline:
            try:
                ray.get(self.actors[replica].node.remote(), timeout=self.cfg.start_timeout)
                return
            except RayActorError:  # still restarting (or out of ray.max_restarts: then it stays dead)
                time.sleep(0.5)
        raise TrainingError(
            f"generator replica {replica} is dead and was not restarted within ray.start_timeout="
            f"{self.cfg.start_timeout}s (ray.max_restarts={self.cfg.max_restarts})"
        )

    def stats(self) -> dict[str, float]:
        per_replica = {
            f"replica{i}_tokens_per_second": t / s
            for i, (t, s) in enumerate(zip(self.tokens, self.seconds, strict=True))
            if s
        }
        return {"reissued_prompts": self.reissued_prompts, "generator_nodes": len(set(self.nodes)), **per_replica}

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.inflight.clear()


class RewardActor(_Actor):
    def __init__(self, scorer: RewardFn):
        self.scorer = scorer

    def score(self, *args) -> float | list[float]:
        return self.scorer(*args)


class RayScorer:
    """A pool of reward actors scoring in parallel, one call each at a time, each under `reward.timeout`.

    A call past its timeout marks its rollout failed and its actor is replaced, so a hung verifier costs one
    timeout, never the loop; a scorer that raises is a counted failure. An actor that dies (its process killed,
    its node lost) is replaced and its rollout scored again (`reward_reissued`); a rollout whose scoring kills
    `MAX_DEATHS` actors is a counted failure.
    """

    MAX_DEATHS = 2

    def __init__(self, cfg: RayConfig, scorer: RewardFn, reward: RewardConfig):
        connect(cfg)
        self.reward, self.actor_cls = reward, ray.remote(RewardActor).options(**_options(cfg, cfg.reward_cpus))
        self.scorer, self.with_prompt = scorer, takes_prompt(scorer)
        self.actors = [self.actor_cls.remote(scorer) for _ in range(cfg.reward_workers)]
        _wait_ready(self.actors, "reward", cfg)

    def _replace(self, i: int) -> None:
        ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self.actor_cls.remote(self.scorer)

    def score(self, rollouts: list[Rollout]) -> dict[str, float]:
        counts = {"reward_timeouts": 0.0, "reward_errors": 0.0, "reward_reissued": 0.0}
        todo, running = deque(rollouts), {}  # running: future -> (rollout, actor index, deadline)
        free, deaths = deque(range(len(self.actors))), {}
        while todo or running:
            while todo and free:
                i, r = free.popleft(), todo.popleft()
                running[self.actors[i].score.remote(*reward_args(r, self.with_prompt))] = (
                    r,
                    i,
                    time.monotonic() + self.reward.timeout,
                )
            wait = max(0.0, min(d for _, _, d in running.values()) - time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait)
            for fut in done:
                r, i, _ = running.pop(fut)
                try:
                    assign_result(r, ray.get(fut), self.scorer)
                except RewardError:
                    raise  # a bug in the reward function: end the run, never count it
                except RayActorError:
                    self._replace(i)
                    deaths[id(r)] = deaths.get(id(r), 0) + 1
                    if deaths[id(r)] < self.MAX_DEATHS:
                        todo.appendleft(r)  # score it again, on a fresh actor
                        counts["reward_reissued"] += 1
                    else:
                        r.reward, r.reward_failed = self.reward.failure_reward, True
                        counts["reward_errors"] += 1
                except Exception:
                    r.reward, r.reward_failed = self.reward.failure_reward, True
                    counts["reward_errors"] += 1
                free.append(i)
            for fut, (r, i, deadline) in list(running.items()):
                if time.monotonic() >= deadline and fut not in done:
                    running.pop(fut)
                    r.reward, r.reward_failed = self.reward.failure_reward, True
                    counts["reward_timeouts"] += 1
                    self._replace(i)  # a hung verifier: replace the actor, not the loop
                    free.append(i)
        return counts

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)


class TrainerActor(_Actor):
    """One data-parallel rank: a model copy, its Trainer (DDP over gloo, or NCCL on CUDA) and its share of a batch."""

    def __init__(
        self,
        model_config,
        weights,
        ref_weights,
        trainer_args: tuple,
        parallel: str,
        threads: int,
        colocated: bool,
        adapter: tuple[LoraConfig, str, list] | None = None,
    ):
        torch.set_num_threads(threads)
        self.model = _model(model_config, weights)
        if adapter:  # LoRA: the controller's adapters on the base weights just loaded
            lora, base, adapter_weights = adapter
            self.model = apply(self.model, lora, base)
            load_flat(trained_parameters(self.model), _fetch(adapter_weights[0]))
        self.ref = _model(model_config, ref_weights).eval() if ref_weights is not None else None
        self.trainer_args, self.parallel, self.colocated = trainer_args, parallel, colocated

    def address(self) -> str:
        return _free_address()

    def setup(self, address: str, rank: int, world: int) -> None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        backend = weight_sync.backend_for(device)
        dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank, world_size=world)
        self.model.to(device)
        if self.ref is not None:
            self.ref.to(device)
        offload = self.colocated and device.type == "cuda"  # untested here: no GPU
        self.trainer = Trainer(self.model, *self.trainer_args, self.ref, self.parallel, offload=offload)

    def step(self, seqs: list[Sequence]) -> dict[str, float]:
        return self.trainer.step(seqs)

    def weights(self):
        """Every rank gathers (FSDP2 needs them all); rank 0's copy is the one returned."""
        flat = self.trainer.weights()
        return flat.cpu().numpy() if dist.get_rank() == 0 else None

    def state_dict(self) -> dict | None:
        state = self.trainer.state_dict()
        return state if dist.get_rank() == 0 else None

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)


def _model(model_config, weights: list):
    model = AutoModelForCausalLM.from_config(model_config)
    load_flat(model, _fetch(weights[0]))
    return model


class RayTrainer:
    """K data-parallel ranks as Ray actors in one placement group, behind Trainer's calls.

    Each step sends rank r every K-th sequence; the ranks' DDP all-reduce makes the update the one-rank update
    on the whole batch. `weights()` is an object-store reference to rank 0's weights, which the generators read
    as they are; the controller copies them into its own model only to evaluate or checkpoint.
    """

    def __init__(
        self, cfg: RayConfig, model, ref_model, optim, algo, pad_id: int, temperature: float, threads=1, lora=None
    ):
        connect(cfg)
        k, self.group = cfg.trainer_ranks, None
        if cfg.placement == "disaggregated":  # a trainer's ranks together, on as few nodes as fit them
            bundle = (
                {"CPU": cfg.trainer_cpus, "GPU": cfg.trainer_gpus} if cfg.trainer_gpus else {"CPU": cfg.trainer_cpus}
            )
            self.group = placement_group([bundle] * k, strategy="PACK")
            try:
                ray.get(self.group.ready(), timeout=cfg.start_timeout)
            except GetTimeoutError:
                raise TrainingError(
                    f"ray: {k} trainer ranks of {bundle} did not fit within ray.start_timeout={cfg.start_timeout}s; "
                    f"the cluster has {ray.available_resources()} free"
                ) from None
        weights = [ray.put(flatten(base_parameters(model)).numpy())]
        ref = [ray.put(flatten(ref_model).numpy())] if ref_model is not None else None
        adapted = is_adapted(model)
        adapter = (lora, base_of(model), [ray.put(flatten(trained_parameters(model)).numpy())]) if adapted else None
        actor = ray.remote(TrainerActor)
        self.ranks = [
            actor.options(
                num_cpus=cfg.trainer_cpus,
                num_gpus=cfg.trainer_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=r)
                if self.group
                else _here(),
            ).remote(
                model.config,
                weights,
                ref,
                (optim, algo, pad_id, temperature),
                cfg.trainer_parallel,
                threads,
                cfg.placement == "colocated",
                adapter,
            )
            for r in range(k)
        ]
        _wait_ready(self.ranks, "trainer", cfg)
        address = ray.get(self.ranks[0].address.remote())
        ray.get([a.setup.remote(address, r, k) for r, a in enumerate(self.ranks)])

    def step(self, seqs: list[Sequence]) -> dict[str, float]:
        k = len(self.ranks)
        if len(seqs) < k:
            raise ValueError(f"ray.trainer_ranks={k}: a batch of {len(seqs)} sequences leaves a rank without data")
        return ray.get([a.step.remote(seqs[r::k]) for r, a in enumerate(self.ranks)])[0]

    def weights(self) -> ray.ObjectRef:
        rank0, *_ = [a.weights.remote() for a in self.ranks]  # every rank joins the gather (FSDP2)
        return rank0

    def copy_to(self, model) -> None:
        load_flat(trained_parameters(model), _fetch(self.weights()))

    def state_dict(self) -> dict:
        return ray.get([a.state_dict.remote() for a in self.ranks])[0]  # FSDP2 gathers the shards: a collective

    def load_state_dict(self, state: dict) -> None:
        ray.get([a.load_state_dict.remote(state) for a in self.ranks])

    def close(self) -> None:
        for a in self.ranks:
            ray.kill(a)
        if self.group:
            remove_placement_group(self.group)
