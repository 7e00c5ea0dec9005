"""torch.distributed on CPU (gloo): data-parallel training and the weight-sync broadcast."""

import dataclasses
import datetime
import faulthandler
import socket
import uuid

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from relayrl import adapters
from relayrl.adapters import LoraConfig
from relayrl.executors import weight_sync
from relayrl.executors.weights import flatten, whole
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer


def _watchdog() -> None:
    """A rank that hangs prints every thread's stack and exits, before pytest-timeout (300 s) stops the test with
    only the parent's stack; its collectives time out at 120 s, so 240 s is a hang outside them."""
    faulthandler.dump_traceback_later(240, exit=True)


def _rendezvous(folder) -> str:
    """A fresh file for spawned ranks to meet at: no TCP port picked beforehand that another process (a Ray an earlier
    test of this worker started) could take meanwhile, and no store server in rank 0 that the others need until they
    leave."""
    return f"file://{folder}/rendezvous-{uuid.uuid4().hex}"


def _join(rank: int, world: int, init: str) -> None:
    """A spawned rank's start: the watchdog, one thread, the gloo group."""
    _watchdog()
    torch.set_num_threads(1)
    # a collective that waits longer than this is a hang: fail with a traceback rather than stall the suite
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timeout)


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _batch() -> list[Sequence]:
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(4, 40, (3 + i,), generator=g).tolist() for i in range(3)]  # each sampled 3-4 times
    seqs = []
    for i in range(10):  # uneven lengths, so the ranks' micro-batches differ in number and shape
        c = 2 + (3 * i) % 7
        mu = (-torch.rand(c, generator=g) * 3).tolist()
        completion = torch.randint(4, 40, (c,), generator=g).tolist()
        seqs.append(Sequence(prompts[i % 3], completion, mu, [float(i % 3 - 1)] * c))
    return seqs


def _trainer(aggregation: str, parallel: str = "ddp", share_prompts: bool = True, **algo) -> Trainer:
    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    ref = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=1)[0]
    algo = AlgorithmConfig(kl_coef=0.1, aggregation=aggregation, **algo)
    optim = OptimConfig(micro_batch_tokens=20, warmup_steps=0, share_prompts=share_prompts)
    return Trainer(model, optim, algo, tok.pad_token_id, temperature=0.7, ref_model=ref, parallel=parallel)


def _grads(trainer: Trainer, module: torch.nn.Module | None = None) -> torch.Tensor:
    return torch.cat([whole(p.grad).reshape(-1) for p in (module or trainer.model).parameters()])


def _critic_trainer(parallel: str, share_prompts: bool = True, value_model: str = "separate") -> Trainer:
    """PPO with GAE: a critic beside the policy or a head on its backbone, each completion rewarded on its last token
    (`_critic_batch`)."""
    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    optim = OptimConfig(micro_batch_tokens=20, warmup_steps=0, share_prompts=share_prompts)
    algo = AlgorithmConfig(advantage="gae", loss="ppo", value_model=value_model)
    trainer = Trainer(model, optim, algo, tok.pad_token_id, temperature=0.7, parallel=parallel)
    with torch.no_grad():  # its head starts at 0, which leaves the backbone without a gradient: give it one
        (trainer.critic.head if trainer.critic is not None else trainer.value_head).weight.fill_(0.1)
    return trainer


VALUE_MODELS = ("separate", "shared")


def _valued(trainer: Trainer) -> torch.nn.Module:
    """What the value loss trains: the critic, or the policy with its shared head."""
    return trainer.critic if trainer.critic is not None else trainer.logprobs


def _value_weights(trainer: Trainer, state: dict) -> dict:
    return state["critic"]["weights"] if trainer.critic is not None else state["value_head"]


def _critic_batch() -> list[Sequence]:
    return [
        dataclasses.replace(s, advantages=None, rewards=[0.0] * (len(s.completion_ids) - 1) + [float(i % 2)])
        for i, s in enumerate(_batch())
    ]


U = 2.0**-24  # float32 unit roundoff: one rounding moves a value by at most this, relative


def _adam_first_step_atol(g_a: torch.Tensor, g_b: torch.Tensor, norm_a: float, norm_b: float, trainer: Trainer):
    """How far apart two runs' weights may land after the first AdamW step (zero moments, no weight decay) given
    their gradients g_a, g_b. That step is lr * g/(|g| + eps), g the clipped gradient (bias-corrected: m = g,
    sqrt(v) = |g|): never more than lr, but its slope eps/(|g| + eps)^2 peaks at 1/eps = 1e8 at g = 0, so a
    gradient of a few eps (3e-9) that two summation orders give 2^-24-ish apart moves by ~1e-3 * lr. Mean value
    theorem on [g_a, g_b]: |step_a - step_b| <= lr * eps * |g_a - g_b| / (min |g| + eps)^2, the min 0 if the
    interval holds 0. Plus the step's own few float32 roundings (<= 8 * U * lr); the caller adds the weights'."""
    cfg, eps = trainer.optim_cfg, trainer.optimizer.param_groups[0]["eps"]
    assert cfg.weight_decay == 0 and cfg.warmup_steps == 0  # the formula above: full lr, no decay term
    a = g_a * min(1.0, cfg.grad_clip / (norm_a + 1e-6))  # clip_grad_norm_'s factor
    b = g_b * min(1.0, cfg.grad_clip / (norm_b + 1e-6))
    low = torch.where(a * b > 0, torch.minimum(a.abs(), b.abs()), torch.zeros_like(a))
    return cfg.lr * (eps * (a - b).abs() / (low + eps) ** 2 + 8 * U)


def _rank(rank: int, world: int, init: str, out: str, aggregation: str, parallel: str) -> None:
    _join(rank, world, init)
    trainer = _trainer(aggregation, parallel)
    metrics = trainer.accumulate(_batch()[rank::world])  # each rank its share of the global batch
    grads = _grads(trainer)
    trainer.optimizer.zero_grad()
    step = trainer.step(_batch()[rank::world])
    result = {"metrics": metrics, "grads": grads, "step": step, "weights": trainer.weights()}
    result["state"] = trainer.state_dict()  # FSDP2: gathered whole, keyed by name
    if aggregation == "token":  # PPO's value model, data-parallel beside its policy or on its backbone
        critics = {value_model: _critic_trainer(parallel, value_model=value_model) for value_model in VALUE_MODELS}
        for value_model, critic in critics.items():
            metrics = critic.accumulate(_critic_batch()[rank::world])
            grads = _grads(critic, _valued(critic))
            result[value_model] = metrics, grads, _value_weights(critic, critic.state_dict())
        # the shared head resumed from its gathered state, optimizer included: the same head on every rank
        shared = critics["shared"]
        shared.optimizer.zero_grad()
        shared.step(_critic_batch()[rank::world])
        resumed = _critic_trainer(parallel, value_model="shared")
        state = [shared.state_dict()]
        dist.broadcast_object_list(state, src=0)  # a checkpoint is rank 0's: FSDP2 gathers the optimizer's there alone
        resumed.load_state_dict(state[0])
        result["resumed_head"] = flatten(resumed.value_head), flatten(shared.value_head)
        # REINFORCE++ with the KL in the reward: its advantages normalised over both ranks' tokens
        reinforce_pp = _trainer("token", parallel, advantage="reinforce_pp", loss="ppo", kl_in_reward=True)
        result["reinforce_pp"] = reinforce_pp.accumulate(_critic_batch()[rank::world]), _grads(reinforce_pp)
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_gloo_ranks_give_one_rank_loss_gradients_and_update(tmp_path, parallel):
    for aggregation in ("token", "sequence"):
        mp.spawn(_rank, args=(2, _rendezvous(tmp_path), str(tmp_path), aggregation, parallel), nprocs=2)
        single = _trainer(aggregation, share_prompts=parallel != "fsdp2")  # FSDP2 ranks do not share prompts
        expected = single.accumulate(_batch())
        grads = _grads(single)
        single.optimizer.zero_grad()
        step = single.step(_batch())
        # Two ranks compute what one process does in another float32 order: each rank sums its micro-batches
        # (other shapes, so other matmul blocking), the all-reduce adds the two partial sums, and ATEN_CPU_CAPABILITY
        # / OMP_NUM_THREADS change the kernels' order again. Float32 sums of n terms moved by reordering: at most
        # ~n * U * (sum of |terms|), worst case. Here n = the batch's 89 tokens (the sum every weight's gradient, and
        # every metric, runs over) + 2 layers x 4 * 32 (the longest dot product in each layer, the MLP's): 345.
        n = sum(len(s.prompt_ids) + len(s.completion_ids) for s in _batch()) + 2 * 4 * 32
        # the terms of a gradient entry are no larger than the largest entry: summed over the 10 sequences their
        # magnitudes reach 1.12 x max |g| (measured), hence 1.2 x max |g| as the scale of every entry
        grad_atol = 1.2 * n * U * float(grads.abs().max())
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
            assert got["metrics"]["trained_tokens"] == expected["trained_tokens"]  # a count of tokens: exact
            # the loss: a (per-token or per-sequence) mean over 50 completion tokens of terms w * A * logp + 0.1 * k3,
            # |term| 0.17 on average here (measured): n * U * 0.2 = 4e-6
            assert abs(got["metrics"]["loss"] - expected["loss"]) < n * U * 0.2
            # k3 >= 0 averages 0.018 (so n * U * 0.02 = 4e-7) and exp(d) - d - 1 is evaluated to ~3 * U absolute
            # per token (2e-7): 1e-6 holds both
            assert abs(got["metrics"]["kl_mean"] - expected["kl_mean"]) < 1e-6
            torch.testing.assert_close(got["grads"], grads, rtol=0, atol=grad_atol)
            # normwise the gradient is reproduced to ~1.2 * n * U relative (as above); the norm's own float32 sum of
            # 35584 squares, in blocks (and per FSDP2 shard), adds ~log2(35584) = 16 roundings: 2 * n * U = 4e-5
            assert got["step"]["grad_norm"] == pytest.approx(step["grad_norm"], rel=2 * n * U)
            # the weights after one AdamW step: not to a fixed atol, since Adam amplifies a last-bit difference of a
            # gradient near eps (a fresh clone on a 2-core EPYC: 1 weight of 35584 1.4e-6 apart, its gradient
            # 3.4e-9) but to the difference the two runs' own gradients explain (the step recomputes the gradient
            # saved above in the same process with the same kernels in the same order: the same bits)
            atol = _adam_first_step_atol(got["grads"], grads, got["step"]["grad_norm"], step["grad_norm"], single)
            want = single.weights()
            # plus 1 ulp: each weight is rounded to its nearest float32, half an ulp off its exact value
            big = torch.maximum(got["weights"].abs(), want.abs())
            ulp = torch.nextafter(big, torch.full_like(big, float("inf"))) - big
            excess = (got["weights"] - want).abs() - atol - ulp
            assert excess.max() <= 0, f"weight {int(excess.argmax())} off by {float(excess.max())} beyond the bound"
        if aggregation == "token":  # the value model's gradients and value loss, as the policy's above
            for value_model in VALUE_MODELS:
                critic = _critic_trainer(parallel, share_prompts=parallel != "fsdp2", value_model=value_model)
                expected = critic.accumulate(_critic_batch())
                critic_grads = _grads(critic, _valued(critic))
                for rank in range(2):
                    metrics, grads_, weights = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)[value_model]
                    if rank == 0:  # gathered whole to rank 0 (FSDP2) before any update: the one-rank weights
                        assert all(
                            torch.equal(weights[k], v) for k, v in _value_weights(critic, critic.state_dict()).items()
                        )
                    # a token mean of (V - R)^2 / 2 >= 0: reordering its sum moves it by <= n * U relative
                    assert metrics["value_loss"] == pytest.approx(expected["value_loss"], rel=n * U)
                    # a copy of the policy's backbone, or the policy itself (its loss and 0.1 x the value loss), run
                    # on the same tokens: the policy's bound above
                    torch.testing.assert_close(
                        grads_, critic_grads, rtol=0, atol=1.2 * n * U * float(critic_grads.abs().max())
                    )
            reinforce_pp = _trainer(
                "token", share_prompts=parallel != "fsdp2", advantage="reinforce_pp", loss="ppo", kl_in_reward=True
            )
            expected, rpp_grads = reinforce_pp.accumulate(_critic_batch()), _grads(reinforce_pp)
            for rank in range(2):
                got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
                resumed, trained = got["resumed_head"]
                assert torch.equal(resumed, trained)  # whole tensors copied into shards: bits
                metrics, grads_ = got["reinforce_pp"]
                assert metrics["kl_mean"] == pytest.approx(expected["kl_mean"], abs=1e-6)  # as the policy's above
                # each token's advantage from statistics over both ranks' tokens (float64, then rounded to float32:
                # a few ulp of its ~2 size, inside the n * U per entry of the policy's bound above)
                torch.testing.assert_close(grads_, rpp_grads, rtol=0, atol=1.2 * n * U * float(rpp_grads.abs().max()))
        if parallel == "fsdp2":  # the gathered optimizer state is the one-rank state, by parameter name
            state = torch.load(tmp_path / "rank0.pt", weights_only=False)["state"]["optimizer"]["state"]
            names = [n.removeprefix("model.") for n in state]
            by_name = dict(single.model.named_parameters())
            for name, key in zip(names, state, strict=True):
                exp = single.optimizer.state[by_name[name]]["exp_avg_sq"]
                # v = (1 - beta2) * g^2 after one step (g clipped, so |g| <= max |grads|): gradients grad_atol
                # apart give v at most (1 - beta2) * grad_atol * (2 max |g| + grad_atol) apart, and v's own two
                # roundings (g * g, times 1 - beta2) 2 * U relative
                beta2 = single.optim_cfg.betas[1]
                v_atol = (1 - beta2) * grad_atol * (2 * float(grads.abs().max()) + grad_atol)
                torch.testing.assert_close(state[key]["exp_avg_sq"], exp, rtol=2 * U, atol=v_atol)


def _lora_trainer(parallel: str) -> Trainer:
    """LoRA (rank 4) on the tiny model, its B not 0 so that A has a gradient too; the KL reference: adapters off."""
    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    model = adapters.apply(model, LoraConfig(rank=4, alpha=8.0), "tiny-llama")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    optim = OptimConfig(micro_batch_tokens=20, warmup_steps=0, share_prompts=parallel != "fsdp2")
    return Trainer(model, optim, AlgorithmConfig(kl_coef=0.1), tok.pad_token_id, temperature=0.7, parallel=parallel)


def _lora_grads(trainer: Trainer) -> torch.Tensor:
    return torch.cat([whole(p.grad).reshape(-1) for p in adapters.trained_parameters(trainer.model)])


def _lora_rank(rank: int, world: int, init: str, out: str, parallel: str) -> None:
    _join(rank, world, init)
    trainer = _lora_trainer(parallel)
    trainer.accumulate(_batch()[rank::world])
    grads = _lora_grads(trainer)
    trainer.optimizer.zero_grad()
    step = trainer.step(_batch()[rank::world])
    torch.save({"grads": grads, "step": step, "weights": trainer.weights()}, f"{out}/lora{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_gloo_ranks_train_lora_adapters_as_one_rank(tmp_path, parallel):
    mp.spawn(_lora_rank, args=(2, _rendezvous(tmp_path), str(tmp_path), parallel), nprocs=2)
    single = _lora_trainer(parallel)
    single.accumulate(_batch())
    grads = _lora_grads(single)
    single.optimizer.zero_grad()
    step = single.step(_batch())
    want = single.weights()
    assert want.numel() == sum(p.numel() for p in adapters.trained_parameters(single.model))  # the adapters only
    # the bounds of the full-model test above, for the same batch through the same layers (rank 4 adds two
    # dot products of 4 terms per layer, well inside its 2 x 4 x 32)
    n = sum(len(s.prompt_ids) + len(s.completion_ids) for s in _batch()) + 2 * 4 * 32
    for rank in range(2):
        got = torch.load(tmp_path / f"lora{rank}.pt", weights_only=False)
        assert abs(got["step"]["loss"] - step["loss"]) < n * U * 0.2
        torch.testing.assert_close(got["grads"], grads, rtol=0, atol=1.2 * n * U * float(grads.abs().max()))
        atol = _adam_first_step_atol(got["grads"], grads, got["step"]["grad_norm"], step["grad_norm"], single)
        big = torch.maximum(got["weights"].abs(), want.abs())
        ulp = torch.nextafter(big, torch.full_like(big, float("inf"))) - big
        assert ((got["weights"] - want).abs() - atol - ulp).max() <= 0


def _sync_rank(rank: int, world: int, address: str, out: str) -> None:
    _watchdog()
    pg = weight_sync.init_group(address, rank, world, timeout_s=120)
    model = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=rank)[0]  # each rank starts different
    if rank == 0:
        for version in (1, 2):
            flat = flatten(model) + version  # what the trainer holds at that version
            weight_sync.send(pg, flat, version, bucket_mb=0.01)  # ~2.6k floats per bucket: many buckets
            torch.save(flat, f"{out}/sent{version}.pt")
    else:
        buffer = torch.zeros_like(flatten(model))
        for _ in range(2):
            version = weight_sync.receive(pg, buffer, bucket_mb=0.01)
            torch.save(buffer.clone(), f"{out}/rank{rank}_v{version}.pt")
    pg.barrier().wait()  # rank 0 holds the rendezvous store: it leaves last


def test_weight_sync_delivers_the_trainers_tensors_with_their_version(tmp_path):
    mp.spawn(_sync_rank, args=(3, _free_address(), str(tmp_path)), nprocs=3)
    for version in (1, 2):
        sent = torch.load(tmp_path / f"sent{version}.pt")
        for rank in (1, 2):
            # exact: a broadcast copies bits, no arithmetic (the + version ran once, on rank 0, before sending)
            assert torch.equal(torch.load(tmp_path / f"rank{rank}_v{version}.pt"), sent)
