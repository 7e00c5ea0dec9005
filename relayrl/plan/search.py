"""Every placement of a number of devices, simulated: the best split for each mode and the one to recommend."""

from __future__ import annotations

from dataclasses import dataclass, replace

from relayrl.plan.inputs import Device, ModelShape, Placement, PlanError, Precision, Workload
from relayrl.plan.phases import PhaseTimes, phase_times, smallest_tp
from relayrl.plan.pipeline import Schedule, simulate

NEAR_BEST = 1.01  # a lower staleness within 1% of the best step time is recommended instead (fresher samples)


@dataclass(frozen=True)
class Option:
    placement: Placement
    tp: int
    times: PhaseTimes
    schedule: Schedule
    tokens_per_second: float

    @property
    def label(self) -> str:
        p = self.placement
        mode = f"async (staleness <= {p.max_staleness})" if p.mode == "async" else "sync"
        split = f"{p.gen_devices} gen + {p.train_devices} train" if p.kind == "disaggregated" else "all devices"
        return f"{p.kind} {mode}, {split}"


def evaluate(m: ModelShape, d: Device, p: Precision, w: Workload, place: Placement, steps: int = 64) -> Option:
    times, tp = phase_times(m, d, p, w, place)
    schedule = simulate(times, place.kind == "colocated", place.staleness_bound, steps, place.scorer_on_trainer)
    return Option(replace(place, gen_tp=tp), tp, times, schedule, w.trained_tokens / schedule.step_seconds)


def splits(
    m: ModelShape, d: Device, p: Precision, w: Workload, devices: int, mode: str, staleness: int
) -> list[Option]:
    """Every disaggregated split that fits: generator devices in multiples of the smallest replica, the rest
    train; each split's generator picks its own fastest replica size."""
    tp = smallest_tp(m, d, p, w, devices)
    options = []
    for gen in range(tp, devices, tp):
        place = Placement("disaggregated", devices - gen, gen, 0, mode, staleness)
        try:
            options.append(evaluate(m, d, p, w, place))
        except PlanError:  # this split's trainer (or generator) does not fit: another may
            continue
    return options


def alternatives(
    m: ModelShape, d: Device, p: Precision, w: Workload, devices: int, max_staleness: int = 4
) -> list[Option]:
    """Colocated sync and async, and the best disaggregated split in sync and at each staleness bound up to
    `max_staleness`, fastest first. Raises PlanError when nothing fits."""
    if devices < 1:
        raise PlanError(f"devices: must be >= 1; got {devices}")
    options, errors = [], []
    for mode, staleness in [("sync", 0)] + [("async", s) for s in range(1, max_staleness + 1)]:
        try:
            options.append(evaluate(m, d, p, w, Placement("colocated", devices, mode=mode, max_staleness=staleness)))
        except PlanError as err:
            errors.append(str(err))
        found = splits(m, d, p, w, devices, mode, staleness) if devices > 1 else []
        if found:
            options.append(min(found, key=lambda o: o.schedule.step_seconds))
    if not options:
        raise PlanError(errors[0] if errors else f"nothing fits on {devices} x {d.name}")
    return sorted(options, key=lambda o: (o.schedule.step_seconds, o.placement.max_staleness))


def recommend(options: list[Option]) -> Option:
    """The fastest, or the least stale option within NEAR_BEST of it."""
    best = min(o.schedule.step_seconds for o in options)
    near = [o for o in options if o.schedule.step_seconds <= best * NEAR_BEST]
    return min(near, key=lambda o: (o.placement.staleness_bound, o.schedule.step_seconds))
