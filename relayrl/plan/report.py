"""`relayrl plan`: the alternatives for a model on some devices, as a table (and a plot of the split)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from relayrl.plan.devices import preset
from relayrl.plan.inputs import Device, PlanError, Precision, Workload
from relayrl.plan.model_shapes import resolve
from relayrl.plan.search import Option, alternatives, recommend, splits

WORKLOAD = Workload(prompts=64, samples_per_prompt=8, prompt_tokens=256, response_mean=512, response_max=2048)
CPU_PRECISION = Precision(gen_bytes=4, train_state_bytes=16, offload_bytes=0)  # relayrl on a CPU: fp32, no offload


def _parse(kind: type, text: str, key: str):
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise PlanError(f"{key}: expected {kind.__name__}; got {text!r}") from None


def overrides(items: list[str]) -> dict[str, dict]:
    """`workload.response_mean=900 device.train_efficiency=0.5 precision.gen_bytes=1` -> changes per section."""
    sections = {"workload": Workload, "device": Device, "precision": Precision}
    changes: dict[str, dict] = {name: {} for name in sections}
    for item in items:
        key, eq, value = item.partition("=")
        section, _, name = key.partition(".")
        if not eq or section not in sections or not name:
            raise PlanError(f"{item!r}: expected section.field=value, section one of {', '.join(sections)}")
        cls = sections[section]
        types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "name"}
        if name not in types:
            raise PlanError(f"{key}: {cls.__name__} has no field {name!r}; fields: {', '.join(types)}")
        kind = {"int": int, "float": float, "bool": bool, "str": str}[types[name]]
        changes[section][name] = _parse(kind, value, key)
    return changes


def table(options: list[Option], chosen: Option, baseline: Option | None):
    from rich.table import Table

    t = Table(title="relayrl plan: one RL step in steady state (-> recommended)", title_justify="left")
    for column in ("", "placement", "mode", "gen+train", "tp", "step s", "tokens/s", "speed-up", "busy g/t", "stale"):
        t.add_column(column, justify="left" if column in ("placement", "mode") else "right")
    for o in options:
        s, p = o.schedule, o.placement
        split = f"{p.gen_devices}+{p.train_devices}" if p.kind == "disaggregated" else f"{p.train_devices} shared"
        t.add_row(
            "->" if o is chosen else "",
            p.kind,
            f"async <= {p.max_staleness}" if p.mode == "async" else "sync",
            split,
            str(o.tp),
            f"{s.step_seconds:.3g}",
            f"{o.tokens_per_second:,.0f}",
            f"{baseline.schedule.step_seconds / s.step_seconds:.2f}x" if baseline else "-",
            f"{s.generator_busy:.0%}/{s.trainer_busy:.0%}",
            f"{s.staleness:.2f}",
        )
    return t


def distinct(options: list[Option]) -> list[Option]:
    """Drop staleness bounds that buy nothing over a lower one in the same placement (within 1%)."""
    kept: list[Option] = []
    for o in sorted(options, key=lambda o: (o.placement.kind, o.placement.staleness_bound)):
        same = [k for k in kept if k.placement.kind == o.placement.kind and k.placement.mode == o.placement.mode]
        if not same or o.schedule.step_seconds < min(k.schedule.step_seconds for k in same) / 1.01:
            kept.append(o)
    return sorted(kept, key=lambda o: (o.schedule.step_seconds, o.placement.staleness_bound))


def plot(path: Path, model: str, device: str, devices: int, by_split: dict[str, list[Option]], baseline: Option | None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, options in by_split.items():
        ax.plot(
            [o.placement.gen_devices for o in options], [o.schedule.step_seconds for o in options], ".-", label=label
        )
    if baseline:
        ax.axhline(baseline.schedule.step_seconds, ls="--", lw=1, color="gray", label="colocated sync, all devices")
    ax.set(xlabel="generator devices (the rest train)", ylabel="predicted step seconds", yscale="log")
    ax.set_title(f"{model} on {devices} x {device}", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plan_command(
    model: str,
    device: str,
    devices: int | None,
    items: list[str],
    max_staleness: int,
    plot_to: str | None,
    json_to: str | None,
) -> None:
    from rich.console import Console

    changes = overrides(items)
    dev = preset(device, **changes["device"])
    cpu = device.upper() == "CPU"
    devices = devices or ((os.cpu_count() or 1) if cpu else 8)
    precision = dataclasses.replace(CPU_PRECISION if cpu else Precision(), **changes["precision"]).check()
    work = dataclasses.replace(WORKLOAD, **changes["workload"]).check()
    shape = resolve(model)
    options = alternatives(shape, dev, precision, work, devices, max_staleness)
    chosen = recommend(options)
    baseline = next((o for o in options if o.placement.kind == "colocated" and o.placement.mode == "sync"), None)
    console = Console(width=max(Console().width, 110))  # a pipe's 80 columns wrap every row
    console.print(
        f"{shape.name}: {shape.params / 1e9:.3g}B parameters; {devices} x {dev.name}; {work.prompts} prompts x"
        f" {work.samples_per_prompt} samples, prompt {work.prompt_tokens:g} tokens, responses {work.response_mean:g}"
        f" mean / {work.response_max} max tokens"
    )
    console.print(table(distinct(options), chosen, baseline))
    t, p = chosen.times, chosen.placement
    console.print(
        f"recommended: {chosen.label}, generator replicas of {chosen.tp}; phases (s): generate {t.generate:.3g},"
        f" train {t.train:.3g}, weight sync {t.sync:.3g}" + (f", swap {t.swap:.3g} each way" if t.swap else "")
    )
    if p.kind == "disaggregated" and p.mode == "async":
        console.print(f"relayrl settings: mode=async max_staleness={p.max_staleness}")
    if plot_to and devices > 1:
        bound = max(1, p.staleness_bound)
        by_split = {
            "disaggregated sync": splits(shape, dev, precision, work, devices, "sync", 0),
            f"disaggregated async, staleness <= {bound}": splits(shape, dev, precision, work, devices, "async", bound),
        }
        plot(Path(plot_to), shape.name, dev.name, devices, by_split, baseline)
        console.print(f"plot: {plot_to}")
    if json_to:
        rows = [
            {
                "label": o.label,
                "placement": dataclasses.asdict(o.placement),
                "times": dataclasses.asdict(o.times),
                "schedule": dataclasses.asdict(o.schedule),
                "tokens_per_second": o.tokens_per_second,
            }
            for o in options
        ]
        Path(json_to).write_text(json.dumps({"recommended": chosen.label, "options": rows}, indent=2) + "\n")
        console.print(f"json: {json_to}")
