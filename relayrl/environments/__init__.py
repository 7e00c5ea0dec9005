"""Environments: what answers a policy's turns in multi-turn episodes (docs/environments.md)."""

from __future__ import annotations

import importlib

from relayrl.environments.base import BUILTIN, Environment, EnvironmentConfig, Reply
from relayrl.rollout import ENVIRONMENT, POLICY

__all__ = ["ENVIRONMENT", "POLICY", "Environment", "EnvironmentConfig", "Reply", "make_environment"]


def make_environment(cfg: EnvironmentConfig) -> Environment | None:
    """The configured environment, or None (single-turn rollouts)."""
    if not cfg.name:
        return None
    module, name = BUILTIN.get(cfg.name, cfg.name).split(":", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"environment.name: cannot import {cfg.name!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"environment.name: {cfg.name!r} is not a subclass of relayrl.environments.Environment")
    return cls(cfg)
