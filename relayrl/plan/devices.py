"""Device presets with their vendors' published figures (dense peaks, SXM parts where there are two forms).

Efficiencies are the model's assumptions, not vendor figures: training at 40% of the BF16 peak (Llama 3 405B
reported 38-43% on H100), prefill at 50%, decode at 70% of memory bandwidth; 10 us a layer of launch cost
(CUDA graphs) and 15 us a tensor-parallel all-reduce. `link` is the per-GPU network between nodes
(InfiniBand: 400 Gb/s on H100/H200 nodes, 200 Gb/s on A100 nodes, 100 Gb Ethernet for L4); `host_link` PCIe.
"""

from __future__ import annotations

from dataclasses import replace

from relayrl.plan.inputs import Device, PlanError

GB = 1e9
T = 1e12
GPU = {"layer_overhead": 10e-6, "allreduce_latency": 15e-6}

PRESETS = {
    "H100": Device("H100", 989 * T, 3.35 * T, 80 * GB, 50 * GB, 64 * GB, fp8_flops=1979 * T, **GPU),
    "H200": Device("H200", 989 * T, 4.8 * T, 141 * GB, 50 * GB, 64 * GB, fp8_flops=1979 * T, **GPU),
    "A100": Device("A100", 312 * T, 2.039 * T, 80 * GB, 25 * GB, 32 * GB, **GPU),
    "L4": Device("L4", 121 * T, 0.3 * T, 24 * GB, 12.5 * GB, 32 * GB, fp8_flops=242 * T, **GPU),
}


def preset(name: str, **changes) -> Device:
    """A preset by name (case-insensitive), `cpu` for this machine (measured), with fields changed by `changes`."""
    key = name.upper()
    if key == "CPU":
        from relayrl.plan.calibrate import this_cpu

        device = this_cpu()
    elif key in PRESETS:
        device = PRESETS[key]
    else:
        raise PlanError(f"device: unknown preset {name!r}; presets are cpu, {', '.join(PRESETS)}")
    try:
        return replace(device, **changes).check()
    except TypeError:
        bad = sorted(set(changes) - set(Device.__dataclass_fields__))
        raise PlanError(f"device: {bad[0]!r} is not a Device field") from None
