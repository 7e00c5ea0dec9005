"""The state of a run that lasts: what a checkpoint saves and a resumed run continues from.

One typed record, written in one place (`Run.save`), read in one place (`checkpoint.load`). It is stored as JSON:
plain data only, so loading a checkpoint never runs code (tensors — the optimizer's state and torch's RNG — go to a
tensors-only file read with `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from relayrl.rollout import Message, Rollout


@dataclass
class HeldoutScore:
    """One held-out evaluation as the summary reports it."""

    accuracy: float
    interval: tuple[float, float]
    messages: dict[str, float | None] = field(default_factory=dict)  # SPOC's self-correction metrics
    audit: dict[str, Any] = field(default_factory=dict)  # gold-judge audit of a run rewarded by a model or judge


@dataclass
class Counters:
    dropped_stale: int = 0
    reward_failures: int = 0
    trained_tokens: int = 0
    rollouts_trained: int = 0
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient
    extra_batches: int = 0  # batches drawn beyond one a step (dynamic sampling): where the data stream stands
    rl_seconds: float = 0.0


Batch = tuple[list[Rollout], float]  # a generated batch and the seconds its generation took


@dataclass
class RunState:
    phase: str  # "pair_sft" (SPOC: its data sampled, PairSFT still to run) | "rl"
    step: int = 0
    sft_seconds: float = 0.0
    sft_steps: int = 0  # the warm start's steps taken (it may end at sft.target_match)
    wall_seconds: float = 0.0  # set-up and SFT included, summed over resumed sessions
    start: HeldoutScore | None = None  # held-out evaluation RL starts from
    final: HeldoutScore | None = None  # the last step's evaluation, once the run is done
    counters: Counters = field(default_factory=Counters)
    pending: list[Batch] = field(default_factory=list)  # generated before the checkpoint, not yet trained on
    # metrics records since the previous checkpoint, this one's step included: a kill between a checkpoint and
    # its metrics line loses nothing, the resumed run writes them again
    records: list[dict] = field(default_factory=list)
    nonfinite_in_a_row: int = 0
    pair_sft: dict | None = None  # SPOC: PairSFT statistics
    pair_sft_data: list[dict] | None = None  # SPOC: the PairSFT examples as `PairExample.from_json` reads them

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        data = dict(data)
        for key in ("start", "final"):
            if data[key] is not None:
                data[key] = HeldoutScore(**{**data[key], "interval": tuple(data[key]["interval"])})
        data["counters"] = Counters(**data["counters"])
        data["pending"] = [([_rollout(r) for r in rollouts], seconds) for rollouts, seconds in data["pending"]]
        return cls(**data)


def _rollout(data: dict) -> Rollout:
    return Rollout(**{**data, "messages": [Message(**m) for m in data["messages"]]})
