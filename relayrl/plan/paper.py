"""The model against LlamaRL's reported speed-ups (arXiv 2505.24034): async disaggregated against a
DeepSpeed-Chat-like synchronous colocated baseline at 8B, 70B and 405B on H100s.

The paper's speed-ups are facts; the GPU counts and batch shape below are this module's assumptions (the
sources we could read give the step times, not the set-up), held the same for both systems so that only
placement, mode and precision differ. The baseline keeps its training state on the GPUs while it generates
(DeepSpeed-Chat's hybrid engine does) and samples in bf16; the LlamaRL-like side samples in FP8 at 405B (the
paper quantizes its generator) and in bf16 below. "colocated + offload" is the baseline with the offloading
LlamaRL's colocated mode uses: it separates what memory buys from what async disaggregation buys.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayrl.plan.devices import preset
from relayrl.plan.inputs import Placement, Precision, Workload
from relayrl.plan.model_shapes import from_size
from relayrl.plan.search import Option, evaluate, recommend, splits

PAPER_SPEEDUP = {"8B": 2.52, "70B": 3.98, "405B": 10.7}
GPUS = {"8B": 64, "70B": 256, "405B": 1024}  # assumed
WORKLOAD = Workload(
    prompts=512, samples_per_prompt=4, prompt_tokens=512, response_mean=1024, response_max=4096, response_cv=0.6
)  # assumed: a GRPO-style math batch, 2048 responses a step
BASELINE_PRECISION = Precision(gen_bytes=2, offload_bytes=0)


@dataclass(frozen=True)
class Row:
    size: str
    gpus: int
    baseline: Option  # DeepSpeed-Chat-like: colocated, sync, state resident, bf16 generator
    offload: Option  # colocated, sync, state offloaded, bf16 generator
    llamarl: Option  # disaggregated, async, best split, FP8 generator at 405B
    paper: float

    @property
    def speedup(self) -> float:
        return self.baseline.schedule.step_seconds / self.llamarl.schedule.step_seconds

    @property
    def speedup_over_offload(self) -> float:
        return self.offload.schedule.step_seconds / self.llamarl.schedule.step_seconds


def comparison(workload: Workload = WORKLOAD) -> list[Row]:
    device, rows = preset("H100"), []
    for size, gpus in GPUS.items():
        model = from_size(size)
        colocated = Placement("colocated", gpus, mode="sync")
        baseline = evaluate(model, device, BASELINE_PRECISION, workload, colocated)
        offload = evaluate(model, device, Precision(), workload, colocated)
        precision = Precision(gen_bytes=1 if size == "405B" else 2)
        llamarl = recommend(splits(model, device, precision, workload, gpus, "async", 1))
        rows.append(Row(size, gpus, baseline, offload, llamarl, PAPER_SPEEDUP[size]))
    return rows
