"""Run one Python program in the sandbox: a fresh temporary directory, a disposable launcher process that confines
it (relayrl/sandbox/launcher.py), output read incrementally up to a cut, a wall-clock deadline, and one typed
`Execution` for every way it can end. Nothing here raises: a sandbox failure is a failed execution, counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from relayrl.sandbox.isolation import cgroup_paths
from relayrl.schema import positive, setting

LAUNCHER = Path(__file__).with_name("launcher.py")
STATUSES = ("ok", "exit", "timeout", "memory", "output_limit", "signal", "setup_error")
STATUS_BYTES = 1 << 16  # the launcher's own status lines: a few hundred bytes
GRACE = 0.5  # seconds to wait for output after the launcher exited (its namespace is already empty)


@dataclass
class SandboxConfig:
    """Limits of one execution, and how many run at once (docs/sandbox.md)."""

    timeout: float = positive(5.0)  # wall-clock seconds, interpreter start included
    cpu_seconds: int = positive(5)  # RLIMIT_CPU: SIGXCPU, reported as a timeout
    memory_mb: int = positive(512)  # RLIMIT_AS: address space, so a thread's stack counts too
    file_mb: int = positive(16)  # RLIMIT_FSIZE: the largest file it may write
    max_processes: int = positive(16)  # processes and threads at once
    output_bytes: int = positive(65536)  # stdout and stderr each cut here; more is an output_limit failure
    workers: int = positive(2)  # executions at once in a SandboxPool: small, so it never starves a trainer
    python: str = ""  # the programs' interpreter; "": this one's base (not the venv, whose packages are the project's)
    read_paths: list[str] = setting(factory=lambda: ["/usr", "/lib", "/lib64", "/bin", "/etc"])  # noqa: RUF009
    strict: bool = False  # a missing isolation layer is a setup_error instead of a recorded degradation


@dataclass(frozen=True)
class Execution:
    """How one program ended. `status` is one of STATUSES; only "ok" (exit code 0) is a success."""

    status: str
    exit_code: int | None = None  # -N: killed by signal N; None: we killed it, or it never started
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    detail: str = ""  # the signal's name, the limit hit, or the setup error
    missing: tuple[str, ...] = ()  # isolation layers this machine could not apply, "layer: reason"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run(
    source: str, stdin: str = "", files: dict[str, str | bytes] | None = None, config: SandboxConfig | None = None
) -> Execution:
    """Run `source` as main.py beside `files` (relative paths) with `stdin`, under `config`'s limits."""
    config = config or SandboxConfig()
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="relayrl-sandbox-", ignore_cleanup_errors=True) as workdir:
            _write_files(Path(workdir), {**(files or {}), "main.py": source})
            result = _execute(workdir, stdin, config, start)
    except Exception as e:  # every way out is a counted execution, never a crashed run
        result = Execution("setup_error", detail=f"{type(e).__name__}: {e}")
    return replace(result, seconds=time.monotonic() - start)


def _write_files(workdir: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = (workdir / name).resolve()
        if not path.is_relative_to(workdir.resolve()) or path == workdir.resolve():
            raise ValueError(f"an extra file must be a relative path inside the work directory; got {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def _execute(workdir: str, stdin: str, config: SandboxConfig, start: float) -> Execution:
    python = config.python or getattr(sys, "_base_executable", sys.executable)
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))  # its standard library is under here
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    status_r, status_w = os.pipe()
    spec = {
        "status_fd": status_w,
        "parent": os.getpid(),
        "workdir": workdir,
        "python": python,
        "env": env,
        "read_paths": [*config.read_paths, prefix],
        "cpu_seconds": config.cpu_seconds,
        "memory_bytes": config.memory_mb << 20,
        "file_bytes": config.file_mb << 20,
        "max_processes": config.max_processes,
        "strict": config.strict,
    }
    launcher = [sys.executable, "-S", "-E", "-s", "-B", str(LAUNCHER), json.dumps(spec)]
    try:
        with tempfile.TemporaryFile() as stdin_file:  # no pipe to feed while we read: the program reads a file
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            proc = subprocess.Popen(
                launcher, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                start_new_session=True, cwd=workdir, env=env,
            )  # fmt: skip
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out_fd: bytearray(), err_fd: bytearray(), status_r: bytearray()}
    limits = {status_r: STATUS_BYTES}
    try:
        stopped = _collect(buffers, limits, config.output_bytes, start + config.timeout, status_r)
        info = _status(buffers[status_r])
        _kill(proc.pid, info.get("pid") if stopped else None)
        proc.wait()
    finally:
        os.close(status_r)
        proc.stdout.close()
        proc.stderr.close()
        _remove_cgroup(proc.pid)
    out, err = (buffers[fd].decode(errors="replace") for fd in (out_fd, err_fd))
    result = Execution(stopped or "", stdout=out, stderr=err, missing=tuple(info.get("missing", ())))
    return _classify(result, info, proc.returncode)


def _collect(buffers: dict[int, bytearray], limits: dict[int, int], limit: int, deadline: float, status_fd: int) -> str:
    """Read every fd into its buffer until all close. "timeout" at `deadline`, "output_limit" when a buffer passes
    its limit; after `status_fd` closes (the launcher exited), output gets only GRACE more seconds."""
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        done = False
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return "" if done else "timeout"
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                buffer, cap = buffers[key.fd], limits.get(key.fd, limit)
                if not chunk:
                    selector.unregister(key.fd)
                    if key.fd == status_fd:
                        done, deadline = True, min(deadline, time.monotonic() + GRACE)
                    continue
                buffer += chunk[: cap + 1 - len(buffer)]  # never more than one byte past the cut
                if len(buffer) > cap:
                    del buffer[cap:]
                    return "output_limit"
    return ""


def _status(raw: bytearray) -> dict:
    info: dict = {}
    for line in raw.decode(errors="replace").splitlines():
        try:
            info.update(json.loads(line))
        except ValueError:
            info["setup_error"] = f"unreadable launcher status: {line[:200]!r}"
    return info


def _kill(launcher: int, program: int | None) -> None:
    """SIGKILL the program's session (known once the launcher reported it) and the launcher's. The launcher is not yet
    reaped, so its group id is ours to signal; its death SIGKILLs the program, pid 1 of a namespace that then
    empties."""
    for group in (program, launcher):
        if group:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)


def _remove_cgroup(launcher: int) -> None:
    for path in cgroup_paths(launcher):
        for _ in range(50):  # the namespace's last processes may still be exiting
            try:
                os.rmdir(path)
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
                continue
            break


def _classify(result: Execution, info: dict, launcher_code: int) -> Execution:
    if result.status:  # we stopped it
        return replace(result, detail=f"wall clock {result.status}" if result.status == "timeout" else "")
    if "setup_error" in info:
        return replace(result, status="setup_error", detail=info["setup_error"])
    if "status" not in info:  # the launcher died without reporting the program's end
        return replace(result, status="signal", detail=f"launcher ended with {launcher_code}")
    code = os.waitstatus_to_exitcode(info["status"])
    if code == 0:
        return replace(result, status="ok", exit_code=0)
    if code < 0:
        name = signal.strsignal(-code) or f"signal {-code}"
        status = "timeout" if -code == signal.SIGXCPU else "signal"
        return replace(result, status=status, exit_code=code, detail=name)
    lines = result.stderr.strip().splitlines()
    memory = bool(lines) and lines[-1].startswith("MemoryError")  # RLIMIT_AS: Python raises MemoryError
    return replace(result, status="memory" if memory else "exit", exit_code=code)
