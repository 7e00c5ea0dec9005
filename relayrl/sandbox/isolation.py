"""The OS mechanisms that confine one program: namespaces, a pids cgroup, rlimits, Landlock and seccomp.

Standard library only, through ctypes: relayrl/sandbox/launcher.py imports this file as a script's sibling (it
runs under `python -S`, outside the package). Each `enter_*`/`apply_*` enforces what the kernel allows and appends
"layer: reason" to `missing` for what it cannot, so a run degrades instead of failing (docs/sandbox.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import struct

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 38, 22
INSIDE_ID = 1000  # the program's uid and gid inside its user namespace: not 0, so its exec keeps no capability


def _fail(what: str) -> str:
    e = ctypes.get_errno()
    return f"{what}: {os.strerror(e)} (errno {e})"


def die_with_parent() -> None:
    """SIGKILL from the kernel when the parent dies: a killed launcher takes its program (and, as the program is pid 1
    of its namespace, every descendant) with it."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def join_pids_cgroup(limit: int, missing: list[str]) -> None:
    """Root only: move this process into a fresh pids cgroup of at most `limit` tasks. RLIMIT_NPROC does not bind
    uid 0 (the kernel exempts the init user), so a root trainer's programs are counted by the cgroup instead.
    relayrl/sandbox/execute.py removes `cgroup_path(launcher pid)` after the launcher is reaped."""
    for path in cgroup_paths(os.getpid()):
        if not os.path.isdir(os.path.dirname(path)):
            continue
        try:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # an empty one left by a killed trainer whose launcher had our pid
            os.mkdir(path)
            for name, value in (("pids.max", limit), ("cgroup.procs", os.getpid())):
                with open(os.path.join(path, name), "w") as f:
                    f.write(str(value))
            return
        except OSError as e:
            missing.append(f"process_limit: cannot use the pids cgroup {path}: {e.strerror}")
            return
    missing.append("process_limit: uid 0 ignores RLIMIT_NPROC and no pids cgroup hierarchy is mounted")


def cgroup_paths(launcher: int) -> list[str]:
    """Where a launcher's pids cgroup may be: cgroup v1's pids hierarchy, or v2's root when it delegates pids."""
    paths = [f"/sys/fs/cgroup/pids/relayrl-sandbox-{launcher}"]
    try:
        with open("/sys/fs/cgroup/cgroup.subtree_control") as f:
            if "pids" in f.read().split():
                paths.append(f"/sys/fs/cgroup/relayrl-sandbox-{launcher}")
    except OSError:
        pass
    return paths


def enter_namespaces(missing: list[str]) -> bool:
    """New user, network, pid, IPC and UTS namespaces; the next fork is pid 1 of the new pid namespace. The user
    namespace maps only our own uid, to INSIDE_ID: no other user exists for the program. False if none was entered."""
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS) != 0:
        missing.append(_fail("namespaces (user, network, pid): unshare"))
        return False
    for name, text in (("setgroups", "deny"), ("uid_map", f"{INSIDE_ID} {uid} 1"), ("gid_map", f"{INSIDE_ID} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return True


def apply_limits(cpu_seconds: int, memory: int, file_size: int, processes: int | None) -> None:
    """rlimits: CPU seconds (SIGXCPU, then SIGKILL a second later), address space, file size, no core dumps, and
    the process count where it binds (`processes` is None when a pids cgroup counts instead)."""
    limits = [
        (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, file_size, file_size),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 256, 256),  # bounds the kernel memory a program can pin through open files
    ]
    if processes is not None:
        limits.append((resource.RLIMIT_NPROC, processes, processes))
    for kind, soft, hard in limits:
        ceiling = resource.getrlimit(kind)[1]  # an unprivileged process cannot raise its hard limit
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(kind, (soft, hard))


# Landlock (linux/landlock.h): syscalls 444-446 on every architecture; access rights by ABI version
_FS_V1 = (1 << 13) - 1  # execute, write/read file, read dir, remove and make anything
_FS_BY_ABI = {1: _FS_V1, 2: _FS_V1 | 1 << 13, 3: _FS_V1 | 3 << 13, 5: _FS_V1 | 7 << 13}  # + refer, truncate, ioctl
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR, _TRUNCATE = 1, 2, 4, 8, 1 << 14
_READ_ONLY = _EXECUTE | _READ_FILE | _READ_DIR
_NET_TCP = 3  # bind and connect: no rule allows either
_SCOPES = 3  # abstract unix sockets and signals: none may leave the sandbox's Landlock domain


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled at boot)."""
    version = libc.syscall(444, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    return max(int(version), 0)


def apply_landlock(read_paths: list[str], workdir: str, missing: list[str]) -> None:
    """Only `read_paths` (read and execute), `workdir` (anything) and /dev/null can be opened; from ABI 4 no TCP
    bind or connect, from ABI 6 no signal or abstract unix socket outside the sandbox. Needs no_new_privs."""
    abi = landlock_abi()
    if abi == 0:
        missing.append("landlock: the kernel has no Landlock (files are guarded by the uid and rlimits only)")
        return
    fs = _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]
    attr = struct.pack("QQQ", fs, _NET_TCP if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)[
        : 8 if abi < 4 else 16 if abi < 6 else 24
    ]
    if abi < 6:
        missing.append(
            f"landlock_scope: ABI {abi} < 6: signals and abstract sockets are confined by the namespaces only"
        )
    ruleset = libc.syscall(444, attr, len(attr), 0)
    if ruleset < 0:
        missing.append(_fail("landlock: create_ruleset"))
        return
    file_rights = _READ_FILE | _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0)
    rules = [(p, _READ_ONLY) for p in read_paths] + [(workdir, fs), ("/dev/null", file_rights)]
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a read path this machine lacks (e.g. /lib64)
            if not os.path.isdir(path):
                access &= _EXECUTE | file_rights  # the kernel refuses directory rights on a file
            rule = struct.pack("=Qi", access, fd)
            ok = libc.syscall(445, ruleset, 1, rule, 0)  # LANDLOCK_RULE_PATH_BENEATH
            os.close(fd)
            if ok != 0:
                raise OSError(ctypes.get_errno(), f"landlock: add_rule {path}")
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if libc.syscall(446, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock: restrict_self")
    finally:
        os.close(ruleset)


# seccomp: a classic BPF filter over (arch, syscall number, first argument)
_ARCHES = {"x86_64": (0xC000003E, {"socket": 41, "kill": 62}), "aarch64": (0xC00000B7, {"socket": 198, "kill": 129})}
_IO_URING_SETUP = 425  # io_uring can open sockets without calling socket(): refuse it too
_ALLOW, _KILL, _EPERM = 0x7FFF0000, 0x80000000, 0x00050000 | errno.EPERM


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def apply_seccomp(missing: list[str]) -> None:
    """Refuse socket() of any family (no network even without a network namespace, and no pathname unix socket,
    which no namespace hides), io_uring, and kill() of a group or of everyone (pid <= 0): outside a pid namespace
    those reach the launcher. Any other architecture's syscalls (i386, x32) kill the program."""
    machine = os.uname().machine
    if machine not in _ARCHES:
        missing.append(f"seccomp: no filter written for {machine}")
        return
    arch, nr = _ARCHES[machine]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    prog = [
        _bpf(ld, 4),  # seccomp_data.arch
        _bpf(jeq, arch, 1, 0),
        _bpf(ret, _KILL),
        _bpf(ld, 0),  # seccomp_data.nr
        _bpf(jge, 0x40000000, 0, 1),  # the x32 ABI's numbers
        _bpf(ret, _KILL),
        _bpf(jeq, nr["socket"], 0, 1),
        _bpf(ret, _EPERM),
        _bpf(jeq, _IO_URING_SETUP, 0, 1),
        _bpf(ret, _EPERM),
        _bpf(jeq, nr["kill"], 0, 4),
        _bpf(ld, 16),  # the low 32 bits of args[0], the pid (little-endian)
        _bpf(jeq, 0, 1, 0),
        _bpf(jge, 0x80000000, 0, 1),  # negative
        _bpf(ret, _EPERM),
        _bpf(ret, _ALLOW),
    ]
    code = ctypes.create_string_buffer(b"".join(prog))
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(code))
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.prctl(PR_SET_SECCOMP, 2, ctypes.c_char_p(fprog), 0, 0) != 0:  # SECCOMP_MODE_FILTER
        missing.append(_fail("seccomp: prctl"))
