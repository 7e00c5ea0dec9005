"""Atomic checkpoints: the policy in HF format plus everything needed to continue exactly.

A checkpoint is written into `<name>.tmp`, then renamed into place, then `latest` is
rewritten by rename too: a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # our own progress bar is the one to read


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(root: Path, name: str, model, tokenizer, state: dict, keep: int) -> Path:
    """Write checkpoint `name` under root; keep the newest `keep` step checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / name, root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({**state, "rng": rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(root / "latest", name)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def load_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", weights_only=False)
