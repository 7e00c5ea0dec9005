"""Atomic checkpoints: the policy in HF format plus everything needed to continue exactly.

A checkpoint is written into `<name>.tmp`, then renamed into place, then `latest` is rewritten by rename too: a
crash at any moment leaves the previous checkpoint intact. Re-saving a name moves the old folder aside to
`<name>.old` before the rename and deletes it only after, so no moment is left without one of the two.

Nothing in a checkpoint is unpickled: the run state is JSON (`relayrl.state.RunState`), the optimizer's state and
torch's RNG are tensors loaded with `torch.load(weights_only=True)`, the weights are safetensors.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from relayrl.errors import TrainingError
from relayrl.state import RunState

STATE, TENSORS = "run_state.json", "trainer_state.pt"


class NonFiniteWeights(TrainingError):
    pass


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def _set_rng_state(state: dict, torch_rng: torch.Tensor) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_rng)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(root: Path, name: str, model, tokenizer, state: RunState, optimizer: dict | None, keep: int) -> Path:
    """Write checkpoint `name` under root; keep the newest `keep` step checkpoints."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # the trainer skips non-finite steps, so this is a bug: never let it overwrite a good checkpoint
        raise NonFiniteWeights(f"checkpoint {name}: non-finite weights in {', '.join(bad[:3])}; not saved")
    root.mkdir(parents=True, exist_ok=True)
    final, tmp, old = root / name, root / f"{name}.tmp", root / f"{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer, "torch_rng": torch.get_rng_state()}, tmp / TENSORS)
    (tmp / STATE).write_text(json.dumps({"state": state.to_json(), "rng": _rng_state()}))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _write_atomic(root / "latest", name)
    shutil.rmtree(old, ignore_errors=True)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and p.suffix not in (".tmp", ".old"))
    # later steps than this one belong to a timeline a kill cut off (this run is recomputing them): never keep them
    # in place of the checkpoint just written
    later = [p for p in steps if p.name > name] if name.startswith("step_") else []
    earlier = [p for p in steps if p not in later and p != final]
    for stale in later + (earlier[: max(0, len(earlier) - keep + 1)] if keep else []):
        shutil.rmtree(stale, ignore_errors=True)
    return final


class CheckpointError(TrainingError):
    pass


def latest(root: Path) -> Path | None:
    """The newest checkpoint (its `.old` copy if a kill came while it was being replaced); None if none was ever
    written. A `latest` that names nothing loadable is an error, never a silent fresh start."""
    pointer = root / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    for path in (root / name, root / f"{name}.old"):
        if (path / STATE).exists():
            return path
    if (root / name / TENSORS).exists():
        raise CheckpointError(f"{root / name}: written by an older relayrl (a pickled state); it cannot be resumed")
    raise CheckpointError(f"{root / 'latest'} names {name!r}, which is missing or incomplete; nothing to resume from")


def load(path: Path) -> tuple[RunState, dict | None]:
    """The run state and optimizer state of checkpoint `path`; restores the RNGs as they were at the save."""
    try:
        saved = json.loads((path / STATE).read_text())
        tensors = torch.load(path / TENSORS, weights_only=True)
        state = RunState.from_json(saved["state"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    _set_rng_state(saved["rng"], tensors["torch_rng"])
    return state, tensors["optimizer"]
