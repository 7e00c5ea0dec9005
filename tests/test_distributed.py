"""torch.distributed on CPU (gloo): data-parallel training and the weight-sync broadcast."""

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from relayrl.executors import weight_sync
from relayrl.executors.weights import flatten, whole
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer


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


def _trainer(aggregation: str, parallel: str = "ddp", share_prompts: bool = True) -> Trainer:
    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    ref = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=1)[0]
    algo = AlgorithmConfig(kl_coef=0.1, aggregation=aggregation)
    optim = OptimConfig(micro_batch_tokens=20, warmup_steps=0, share_prompts=share_prompts)
    return Trainer(model, optim, algo, tok.pad_token_id, temperature=0.7, ref_model=ref, parallel=parallel)


def _grads(trainer: Trainer) -> torch.Tensor:
    return torch.cat([whole(p.grad).reshape(-1) for p in trainer.model.parameters()])


def _rank(rank: int, world: int, address: str, out: str, aggregation: str, parallel: str) -> None:
    torch.set_num_threads(1)
    # a collective that waits longer than this is a hang: fail with a traceback rather than stall the suite
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=rank, world_size=world, timeout=timeout)
    trainer = _trainer(aggregation, parallel)
    metrics = trainer.accumulate(_batch()[rank::world])  # each rank its share of the global batch
    grads = _grads(trainer)
    trainer.optimizer.zero_grad()
    step = trainer.step(_batch()[rank::world])
    result = {"metrics": metrics, "grads": grads, "step": step, "weights": trainer.weights()}
    result["state"] = trainer.state_dict()  # FSDP2: gathered whole, keyed by name
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.barrier()  # rank 0 holds the rendezvous store: it leaves last
    dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_gloo_ranks_give_one_rank_loss_gradients_and_update(tmp_path, parallel):
    for aggregation in ("token", "sequence"):
        mp.spawn(_rank, args=(2, _free_address(), str(tmp_path), aggregation, parallel), nprocs=2)
        single = _trainer(aggregation, share_prompts=parallel != "fsdp2")  # FSDP2 ranks do not share prompts
        expected = single.accumulate(_batch())
        grads = _grads(single)
        single.optimizer.zero_grad()
        step = single.step(_batch())
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
            assert got["metrics"]["trained_tokens"] == expected["trained_tokens"]
            assert abs(got["metrics"]["loss"] - expected["loss"]) < 1e-6
            assert abs(got["metrics"]["kl_mean"] - expected["kl_mean"]) < 1e-6
            torch.testing.assert_close(got["grads"], grads, rtol=1e-5, atol=1e-7)
            assert got["step"]["grad_norm"] == pytest.approx(step["grad_norm"], rel=1e-5)
            torch.testing.assert_close(got["weights"], single.weights(), rtol=1e-5, atol=1e-6)
        if parallel == "fsdp2":  # the gathered optimizer state is the one-rank state, by parameter name
            state = torch.load(tmp_path / "rank0.pt", weights_only=False)["state"]["optimizer"]["state"]
            names = [n.removeprefix("model.") for n in state]
            by_name = dict(single.model.named_parameters())
            for name, key in zip(names, state, strict=True):
                exp = single.optimizer.state[by_name[name]]["exp_avg_sq"]
                torch.testing.assert_close(state[key]["exp_avg_sq"], exp, rtol=1e-4, atol=1e-10)


def _sync_rank(rank: int, world: int, address: str, out: str) -> None:
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
            assert torch.equal(torch.load(tmp_path / f"rank{rank}_v{version}.pt"), sent)
