"""torch.distributed on CPU (gloo): data-parallel training and the weight-sync broadcast."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from relayrl.executors import weight_sync
from relayrl.executors.weights import flatten
from relayrl.models import TinySize, load_model_and_tokenizer
from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _batch() -> list[Sequence]:
    g = torch.Generator().manual_seed(3)
    seqs = []
    for i in range(10):  # uneven lengths, so the ranks' micro-batches differ in number and shape
        p, c = 3 + i % 4, 2 + (3 * i) % 7
        ids = torch.randint(4, 40, (p + c,), generator=g).tolist()
        mu = (-torch.rand(c, generator=g) * 3).tolist()
        seqs.append(Sequence(ids[:p], ids[p:], mu, [float(i % 3 - 1)] * c))
    return seqs


def _trainer(kl: bool) -> Trainer:
    model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
    ref = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=1)[0] if kl else None
    algo = AlgorithmConfig(kl_coef=0.1 if kl else 0.0)
    return Trainer(model, OptimConfig(micro_batch_tokens=40), algo, tok.pad_token_id, temperature=0.7, ref_model=ref)


def _grads(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])


def _rank(rank: int, world: int, address: str, out: str, aggregation: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=rank, world_size=world)
    trainer = _trainer(kl=True)
    trainer.algo.aggregation = aggregation
    metrics = trainer.accumulate(_batch()[rank::world])  # each rank its share of the global batch
    torch.save({"metrics": metrics, "grads": _grads(trainer)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_give_one_rank_loss_and_gradients(tmp_path):
    for aggregation in ("token", "sequence"):
        mp.spawn(_rank, args=(2, _free_address(), str(tmp_path), aggregation), nprocs=2)
        single = _trainer(kl=True)
        single.algo.aggregation = aggregation
        expected = single.accumulate(_batch())
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}.pt")
            assert got["metrics"]["trained_tokens"] == expected["trained_tokens"]
            assert abs(got["metrics"]["loss"] - expected["loss"]) < 1e-6
            assert abs(got["metrics"]["kl_mean"] - expected["kl_mean"]) < 1e-6
            torch.testing.assert_close(got["grads"], _grads(single), rtol=1e-5, atol=1e-7)


def _sync_rank(rank: int, world: int, address: str, out: str) -> None:
    pg = weight_sync.init_group(address, rank, world)
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


def test_weight_sync_delivers_the_trainers_tensors_with_their_version(tmp_path):
    mp.spawn(_sync_rank, args=(3, _free_address(), str(tmp_path)), nprocs=3)
    for version in (1, 2):
        sent = torch.load(tmp_path / f"sent{version}.pt")
        for rank in (1, 2):
            assert torch.equal(torch.load(tmp_path / f"rank{rank}_v{version}.pt"), sent)
