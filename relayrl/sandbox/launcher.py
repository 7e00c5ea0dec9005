"""One execution's disposable parent: `python -S launcher.py SPEC_JSON`, started by relayrl/sandbox/execute.py.

It confines itself (a pids cgroup if root, new namespaces), then forks an init: pid 1 of the new pid namespace, so
the program sees none of our pids, and when the init exits the kernel kills every process left in the namespace.
The init forks the program's process, which adds rlimits, Landlock and seccomp and execs the interpreter on main.py.
JSON lines go to `status_fd`: the layers `missing`, the program's `pid` (only without a pid namespace), its wait
`status`, or a `setup_error`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import isolation  # a sibling file, not relayrl.sandbox.isolation: this runs as a script, outside the package


def main() -> None:
    spec = json.loads(sys.argv[1])
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)  # the program's exec closes it: only we write status lines

    def report(**fields: object) -> None:
        os.write(status_fd, (json.dumps(fields) + "\n").encode())

    isolation.die_with_parent()
    if os.getppid() != spec["parent"]:
        return  # the trainer died before the request: nobody would kill us
    missing: list[str] = []
    root = os.geteuid() == 0
    if root:
        isolation.join_pids_cgroup(spec["max_processes"] + 2, missing)  # +2: this launcher and the init
    namespaced = isolation.enter_namespaces(missing)
    processes = spec["max_processes"] + 2 if namespaced and not root else None
    if not namespaced and not root:
        missing.append("process_limit: without a user namespace RLIMIT_NPROC would count all the user's processes")
    if os.fork() == 0:
        try:
            _init(spec, namespaced, processes, missing, report)
        except BaseException as e:
            report(setup_error=f"{type(e).__name__}: {e}")
        os._exit(0)
    os.wait()
    os._exit(0)  # skip the interpreter's clean-up: nothing to flush, and it costs each execution milliseconds


def _init(spec: dict, namespaced: bool, processes: int | None, missing: list[str], report) -> None:
    """pid 1 of the namespace: run the program as its child, report how it ended, exit (which kills what is left).
    The program is not pid 1 itself: pid 1 ignores signals it has no handler for, SIGXCPU among them."""
    os.setsid()  # out of the launcher's group: the trainer kills that group, and the launcher's death kills us
    isolation.die_with_parent()
    pid = os.fork()
    if pid == 0:
        try:
            _exec_program(spec, processes, missing, report)
        except BaseException as e:
            report(setup_error=f"{type(e).__name__}: {e}")
        os._exit(127)
    if not namespaced:  # a pid the trainer can signal: the program's session, to kill if the launcher is killed
        report(pid=pid)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: its group id cannot be reused
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # without a pid namespace, what it left in its session
    report(status=os.waitpid(pid, 0)[1])


def _exec_program(spec: dict, processes: int | None, missing: list[str], report) -> None:
    os.setsid()  # its own session, so the one group to kill holds all it starts
    isolation.die_with_parent()
    os.chdir(spec["workdir"])
    isolation.apply_limits(spec["cpu_seconds"], spec["memory_bytes"], spec["file_bytes"], processes)
    isolation.apply_landlock(spec["read_paths"], spec["workdir"], missing)
    isolation.apply_seccomp(missing)
    report(missing=missing)
    if spec["strict"] and missing:
        raise RuntimeError("sandbox.strict and a layer is missing: " + "; ".join(missing))
    # -E -s: no PYTHON* variables, no user site; not -I, whose -P would hide main.py's own folder (extra files)
    os.execve(spec["python"], [spec["python"], "-E", "-s", "-B", "main.py"], spec["env"])


if __name__ == "__main__":
    main()
