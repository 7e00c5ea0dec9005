"""The RL loop followed step by step: overlap, idle time and staleness come out of the schedule.

Tasks are issued in the controller's order (generate the first `staleness + 1` batches; then for each step:
score, train, sync the new weights, generate the batch that may now start). Each runs on its role's devices
as soon as those are free and its inputs exist:
    generate k   needs the weights of version k - s (s: the staleness bound, 0 in sync mode);
    reward k     needs generate k; on reward workers of their own, or (`scorer_on_trainer`: relayrl's
                 in-process and process executors, whose controller scores between trainer steps) on the
                 trainer's devices, where it waits for train k - 1 and holds train k + 1 back;
    train k      needs reward k and train k - 1; it makes version k + 1;
    sync k + 1   needs train k, runs on the trainer's devices (they send), and makes version k + 1 usable.
Colocated, generation and training share one pool of devices, and every hand-over between them costs a swap.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayrl.plan.phases import PhaseTimes


@dataclass(frozen=True)
class Schedule:
    step_seconds: float  # steady state: the mean interval between two trainer steps' ends
    generator_busy: float  # share of the step each role's devices spend on its own work
    trainer_busy: float
    swap_share: float  # colocated: share of the step spent handing the devices over
    staleness: float  # mean versions between a batch's sampling weights and the trainer's, sampling newest weights


def simulate(
    times: PhaseTimes, colocated: bool, staleness_bound: int, steps: int = 64, scorer_on_trainer: bool = False
) -> Schedule:
    """Follow `steps` steps and measure the last half (the pipeline has filled by then; the batches after the
    last are issued too, so the window ends in steady state)."""
    total = steps + staleness_bound + 1
    gen_res, train_res = ("devices", "devices") if colocated else ("generator", "trainer")
    reward_res = train_res if scorer_on_trainer else "reward"
    free = {"generator": 0.0, "trainer": 0.0, "devices": 0.0, "reward": 0.0}
    holder = "train"  # colocated: whose state is on the devices (training state to start with)
    gen_start, gen_end, train_end = [0.0] * total, [0.0] * total, [0.0] * total
    ready = [0.0] * (total + 1)  # ready[v]: when weights of version v can be sampled with
    busy = {"generate": [0.0] * total, "train": [0.0] * total, "swap": [0.0] * total}

    def run(resource: str, role: str, after: float, seconds: float, step: int) -> tuple[float, float]:
        nonlocal holder
        start = max(free[resource], after)
        if colocated and resource == "devices" and role != holder:
            busy["swap"][step] += times.swap
            start += times.swap
            holder = role
        free[resource] = start + seconds
        return start, start + seconds

    def generate(k: int) -> None:
        version = max(0, k - staleness_bound)
        gen_start[k], gen_end[k] = run(gen_res, "generate", ready[version], times.generate, k)
        busy["generate"][k] = times.generate

    for k in range(staleness_bound + 1):
        generate(k)
    for k in range(total):
        _, scored = run(reward_res, "train", gen_end[k], times.reward, k)
        _, train_end[k] = run(train_res, "train", max(scored, train_end[k - 1] if k else 0.0), times.train, k)
        busy["train"][k] = times.train + (times.reward if scorer_on_trainer else 0.0)
        _, ready[k + 1] = run(train_res, "train", train_end[k], times.sync, k)
        busy["train"][k] += times.sync
        if k + staleness_bound + 1 < total:
            generate(k + staleness_bound + 1)

    first = steps // 2
    window = train_end[steps - 1] - train_end[first - 1]
    measured = range(first, steps)

    def share(role: str) -> float:
        return sum(busy[role][k] for k in measured) / window

    stale = [k - max(v for v in range(k + 1) if ready[v] <= gen_start[k]) for k in measured]
    return Schedule(
        step_seconds=window / len(measured),
        generator_busy=share("generate"),
        trainer_busy=share("train"),
        swap_share=share("swap"),
        staleness=sum(stale) / len(stale),
    )
