"""A SIGKILLed controller leaves no worker process behind: its generator process and reward workers die with it."""

import os
import signal
import subprocess
import sys
import time

PARENT = """
import os, time, multiprocessing
from relayrl.orphans import die_with_parent
from relayrl.rewards.verifier import RewardConfig, VerifierScorer

def idle(parent):  # as the generator process starts (executors/generator.py)
    die_with_parent(parent)
    time.sleep(600)

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=idle, args=(os.getpid(),)).start()
    scorer = VerifierScorer(lambda completion, answer: 1.0, RewardConfig(workers=2))
    scorer.pool.schedule(time.sleep, args=(0,)).result()  # the reward workers are up
    print("ready", flush=True)
    time.sleep(600)
"""


def _session(pid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for p in out if p != str(pid)]


def test_workers_die_with_a_killed_controller(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(_session(proc.pid)) >= 3  # the idle process and two reward workers (pebble may add a helper)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10  # the kernel signals at once; 10 s covers a loaded machine's reaping
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session(proc.pid) == []
    finally:
        for pid in _session(proc.pid):
            os.kill(int(pid), signal.SIGKILL)
