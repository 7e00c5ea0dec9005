"""The code sandbox: normal programs run; each attack of the fuzz suite is contained, reported as a failed execution,
and leaves no process, file or cgroup behind, with this test process unaffected (docs/sandbox.md)."""

import time
from pathlib import Path

import pytest

from relayrl.sandbox import Program, SandboxConfig, SandboxPool, run
from relayrl.sandbox.attacks import attacks, layers, leftovers, listener
from relayrl.schema import ConfigError, check

REPO = Path(__file__).resolve().parents[1]
FAST = SandboxConfig(timeout=2.0, cpu_seconds=1, memory_mb=256, max_processes=8, output_bytes=4096)


PROJECT_FILE, ESCAPE = REPO / "pyproject.toml", REPO / "tests" / "sandbox-escape.txt"


@pytest.fixture(scope="module")
def missing() -> set[str]:
    """The isolation layers this machine cannot apply, as the sandbox reports them."""
    result = run("pass", config=FAST)
    assert result.ok, result
    return layers(result.missing)


def test_stdout_stdin_exit_code_and_stderr():
    assert run("print('hi')", config=FAST).stdout == "hi\n"
    assert run("import sys; print(sys.stdin.read()[::-1])", stdin="abc", config=FAST).stdout == "cba\n"
    result = run("import sys; print('bad', file=sys.stderr); sys.exit(3)", config=FAST)
    assert (result.status, result.exit_code, result.stderr) == ("exit", 3, "bad\n")


def test_extra_files_sit_beside_the_program():
    files = {"helper.py": "def seven():\n    return 7\n", "data/n.txt": "35"}
    result = run("import helper; print(int(open('data/n.txt').read()) // helper.seven())", files=files, config=FAST)
    assert result.stdout == "5\n", result
    for name in ("../escape.py", "/tmp/escape.py", "."):
        assert run("pass", files={name: "x"}, config=FAST).status == "setup_error"


def test_a_setup_failure_is_a_failed_execution():
    result = run("pass", config=SandboxConfig(python="/nonexistent/python"))
    assert (result.status, result.exit_code) == ("setup_error", None)
    assert "nonexistent" in result.detail


def test_strict_refuses_to_run_without_a_layer(missing):
    result = run("print('ran')", config=SandboxConfig(strict=True))
    assert result.status == ("setup_error" if missing else "ok"), result


def test_the_config_is_checked_like_every_other_section():
    check(SandboxConfig())
    with pytest.raises(ConfigError, match="timeout"):
        check(SandboxConfig(timeout=0))


def test_pool_keeps_order_runs_workers_at_once_and_counts():
    programs = [Program(f"import time; time.sleep(0.4); print({i})") for i in range(4)] + ["import os; os._exit(1)"]
    with SandboxPool(SandboxConfig(workers=2, timeout=5)) as pool:
        start = time.monotonic()
        results = pool.map(programs)
        elapsed = time.monotonic() - start
    assert [r.stdout for r in results[:4]] == [f"{i}\n" for i in range(4)]
    assert elapsed < 4 * 0.4, elapsed  # two at a time: about 2 x 0.4 s plus start-up
    assert pool.counts == {"ok": 4, "exit": 1}


@pytest.mark.parametrize("name", attacks(PROJECT_FILE, ESCAPE, 0))
def test_each_attack_is_contained_and_reported(name, missing):
    with listener() as server:
        attack = attacks(PROJECT_FILE, ESCAPE, server.getsockname()[1])[name]
        if not attack.testable(missing):
            pytest.skip(f"this machine lacks {attack.layer}: contained only in part")
        result = run(attack.source, config=FAST)
        assert attack.contained(result, ESCAPE, server), (result, leftovers())
    assert result.seconds < FAST.timeout + 1.5
    if name == "huge_output":
        assert len(result.stdout) == FAST.output_bytes
    if name == "read_project":
        assert "relayrl" not in result.stdout and "Permission" in result.stderr
    if name == "os_exit":
        assert result.exit_code == 7
    assert run("print('still here')", config=FAST).stdout == "still here\n"  # the sandbox goes on
