"""DAPO's dynamic sampling in the controller's loop, with stand-ins for the generator, scorer and trainer: which
batches are drawn, which groups are trained on, their staleness in async mode, and an exact resume."""

from collections import deque
from types import SimpleNamespace

import pytest
import torch

from relayrl import controller
from relayrl.config import load_config
from relayrl.rollout import Rollout
from relayrl.state import HeldoutScore, RunState

INFORMATIVE = {0, 3, 4, 5, 6, 7, 9}  # prompts whose two samples differ (rewards 1 and 0); the others get 1 and 1


class Generator:
    """LocalGenerator's semantics: weights and requests queued in order, a request sampled by the last weights."""

    def __init__(self):
        self.queue, self.version = deque(), -1

    def publish(self, flat, version):
        self.queue.append(("weights", version))

    def submit(self, batch_index):
        self.queue.append(("generate", batch_index))

    def collect(self):
        while True:
            kind, value = self.queue.popleft()
            if kind == "weights":
                self.version = value
                continue
            # prompt p's samples: its id is p (so the trainer can name the groups it gets); sample 0 is right
            reward = {p: str(int(p not in INFORMATIVE)) for p in range(4 * value, 4 * value + 4)}
            return [
                Rollout(p, s, [p], [2, 3], [-1.0, -1.0], self.version, "", "stop", answer="1" if s == 0 else reward[p])
                for p in reward
                for s in range(2)
            ], 0.0

    def stats(self):
        return {}


class Scorer:
    def score(self, rollouts):
        for r in rollouts:
            r.reward = float(r.answer)
        return {"reward_timeouts": 0.0, "reward_errors": 0.0}


class Trainer:
    def __init__(self, stop_after: int | None = None, stop=None):
        self.batches, self.stop_after, self.stop = [], stop_after, stop

    def step(self, seqs):
        self.batches.append(sorted({s.prompt_ids[0] for s in seqs}))
        if self.stop_after == len(self.batches):
            self.stop.requested = True
        return {"loss": 0.0, "trained_tokens": 1.0, "grad_norm": 0.0, "skipped_nonfinite": 0.0}

    def weights(self):
        return torch.zeros(1)

    def copy_to(self, model):
        pass

    def state_dict(self):
        return {}


def _run(mode: str, state: RunState | None = None):
    cfg = load_config(
        None,
        [
            f"mode={mode}",
            "max_staleness=1",
            "steps=3",
            "rollout.prompts_per_step=4",
            "rollout.samples_per_prompt=2",
            "algorithm.dynamic_sampling=true",
            "algorithm.dynamic_max_batches=2",
        ],
    )
    return SimpleNamespace(
        cfg=cfg,
        state=state or RunState("rl"),
        request=lambda i: i,
        model=torch.nn.Linear(1, 1),
        sampling=SimpleNamespace(max_new_tokens=16),
        save=lambda name, optimizer: None,
    )


class Tracker:
    def __init__(self):
        self.records = []

    def log(self, record):
        self.records.append(record)


@pytest.fixture(autouse=True)
def _no_heldout(monkeypatch):
    monkeypatch.setattr(controller.phases, "heldout", lambda run: (HeldoutScore(0.5, (0.0, 1.0)), {}))


def _train(run, trainer, stop=None) -> list[dict]:
    tracker, stop = Tracker(), stop or SimpleNamespace(requested=False)
    controller._steps(run.cfg, run, stop, trainer, Generator(), Scorer(), tracker)
    return tracker.records


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_draws_until_enough_informative_groups_within_the_cap(mode):
    run, trainer = _run(mode), Trainer()
    records = _train(run, trainer)
    # step 1: batch 0 has 2 informative groups of the 4 needed, batch 1 four more: the first 4 in order, 6 and 7
    # left out. step 2: batch 2 gives 1, batch 3 none, and the cap of 2 batches is reached: it trains on the one.
    # step 3: batches 4 and 5 have none: every group is trained on (advantage 0).
    assert trainer.batches == [[0, 3, 4, 5], [9], list(range(16, 24))]
    assert [r["sampled_batches"] for r in records] == [2, 2, 2]
    assert [r["informative_groups"] for r in records] == [6, 1, 0]
    assert [r["untrained_rollouts"] for r in records] == [16 - 8, 16 - 2, 0]
    assert run.state.counters.extra_batches == 3 and run.state.counters.dropped_stale == 0
    # sync: each extra batch is sampled by the weights just published. async (max_staleness 1): batch 2 was
    # requested before step 1's update, so it lags by one at step 2; batch 4 too at step 3, batch 5 does not
    assert [r["staleness"] for r in records] == ([0, 0, 0] if mode == "sync" else [0, 1, 0.5])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_resumed_run_draws_the_same_batches(mode):
    whole = Trainer()
    _train(_run(mode), whole)
    stop = SimpleNamespace(requested=False)
    first = Trainer(stop_after=1, stop=stop)
    run = _run(mode)
    _train(run, first, stop)  # stops after step 1, its in-flight batches drained into the state
    assert run.state.step == 1 and run.state.counters.extra_batches == 1
    rest = Trainer()
    _train(_run(mode, run.state), rest)
    assert first.batches + rest.batches == whole.batches
