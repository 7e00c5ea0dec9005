"""The fuzz suite's attacks, shared by tests/test_sandbox.py and bench/sandbox.py: each is a program, the status
that reports it, and the isolation layer (as `Execution.missing` names them) without which it is not contained."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relayrl.sandbox.execute import Execution


@dataclass(frozen=True)
class Attack:
    source: str
    expected: str  # the status it must be reported with
    layer: str = ""  # "a|b": either contains it; "": rlimits, the deadline and the output cut alone do

    def testable(self, missing: set[str]) -> bool:
        """Whether this machine has a layer that contains it (`missing`: the layers it lacks)."""
        return not self.layer or any(layer not in missing for layer in self.layer.split("|"))

    def contained(self, result: Execution, escape: Path, server: socket.socket) -> bool:
        """Reported as expected, nothing left running or on disk, no file written outside, no connection made."""
        return result.status == self.expected and not leftovers() and not escape.exists() and not _accepts(server)


def attacks(project_file: Path, escape: Path, port: int) -> dict[str, Attack]:
    """The attacks on `project_file` (must stay unreadable), `escape` (must stay unwritten) and a TCP listener on
    localhost `port` (must get no connection)."""
    fork = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
    kill_all = "import os, signal\nos.kill(0, signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)"
    orphan = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)"
    return {
        "infinite_loop": Attack("while True:\n    pass", "timeout"),
        "fork_bomb": Attack(fork, "timeout", "process_limit"),
        "memory_bomb": Attack("x = []\nwhile True:\n    x.append(bytearray(10**7))", "memory"),
        "huge_output": Attack("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "output_limit"),
        "write_outside": Attack(f"open({str(escape)!r}, 'w').write('escaped')", "exit", "landlock"),
        "read_project": Attack(f"print(open({str(project_file)!r}).read())", "exit", "landlock"),
        "socket": Attack(connect, "exit", "seccomp|namespaces"),
        "kill_parent": Attack("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "exit", "landlock_scope"),
        "kill_group": Attack(kill_all, "exit", "seccomp"),
        "os_exit": Attack("import os\nos._exit(7)", "exit"),
        "segfault": Attack("import ctypes\nctypes.string_at(0)", "signal"),
        "orphan": Attack(orphan, "ok", "namespaces"),
    }


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    """A TCP listener on localhost, in this process, for the socket attack to aim at."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


def _accepts(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def leftovers() -> list[str]:
    """Sandbox directories or cgroups not removed, and processes still working in a sandbox directory."""
    found = glob.glob(os.path.join(tempfile.gettempdir(), "relayrl-sandbox-*"))
    found += glob.glob("/sys/fs/cgroup/*/relayrl-sandbox-*") + glob.glob("/sys/fs/cgroup/relayrl-sandbox-*")
    for cwd in glob.glob("/proc/[0-9]*/cwd"):
        try:
            if "relayrl-sandbox-" in os.readlink(cwd):
                found.append(cwd)
        except OSError:
            pass  # it exited meanwhile, or is not ours to inspect
    return found


def layers(missing: tuple[str, ...]) -> set[str]:
    """The layer names of `Execution.missing` ("landlock: no ABI" -> "landlock")."""
    return {m.split(":")[0].split(" ")[0] for m in missing}
