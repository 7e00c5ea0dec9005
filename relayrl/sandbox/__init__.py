"""A sandbox for code execution: one confined process per program, a bounded pool to run many (docs/sandbox.md)."""

from relayrl.sandbox.execute import STATUSES, Execution, SandboxConfig, run
from relayrl.sandbox.pool import Program, SandboxPool

__all__ = ["STATUSES", "Execution", "Program", "SandboxConfig", "SandboxPool", "run"]
