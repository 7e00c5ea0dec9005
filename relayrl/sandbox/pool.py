"""Many executions at once, at most `SandboxConfig.workers`: a thread per running launcher (the threads only wait on
pipes, so the cores go to the programs), results in submission order, every status counted."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from relayrl.sandbox.execute import Execution, SandboxConfig, run


@dataclass(frozen=True)
class Program:
    source: str
    stdin: str = ""
    files: dict[str, str | bytes] = field(default_factory=dict)


class SandboxPool:
    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.counts: Counter[str] = Counter()  # executions by status, for a run's metrics
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(self.config.workers, thread_name_prefix="sandbox")

    def submit(self, program: Program | str) -> Future[Execution]:
        program = Program(program) if isinstance(program, str) else program
        return self._threads.submit(self._run, program)

    def map(self, programs: Iterable[Program | str]) -> list[Execution]:
        """Run `programs`, `workers` at a time; their executions in the same order."""
        return [f.result() for f in [self.submit(p) for p in programs]]

    def _run(self, program: Program) -> Execution:
        result = run(program.source, program.stdin, program.files, self.config)
        with self._lock:
            self.counts[result.status] += 1
        return result

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
