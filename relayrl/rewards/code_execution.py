"""Scoring programs by running them in the sandbox (docs/sandbox.md): the code of a completion, the program it
stands for after a prompt's code, and a harness that checks it on worked examples with a readable failure.

Nothing here raises on a bad program: a syntax error, an exception, a timeout or a killed process is a failed
execution, so one broken completion scores 0 and never stops a reward worker.
"""

from __future__ import annotations

import re
import secrets

from relayrl.sandbox.execute import Execution, SandboxConfig, run

FENCE_RE = re.compile(r"```[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)  # unclosed: a completion cut by its budget
PASSED_RE = re.compile(r"(\d+) of \d+ examples passed")  # an examples program's last line


def extract_code(text: str) -> str:
    """The last fenced block of a completion (```python or bare ```), else the text itself, untouched (its
    indentation may be a function body's)."""
    blocks = FENCE_RE.findall(text)
    return blocks[-1] if blocks else text


def solution_code(prefix: str, text: str) -> str:
    """The code a completion stands for after `prefix` (a function's header and docstring, or ""). Its code
    (`extract_code`) either continues the prefix, when its first line is indented (a function's body, cut where it
    returns to column 0: that is where a stop string such as `\\ndef` ended it), or follows it as whole code, free to
    redefine the prefix's function while using the helpers and imports the prefix defines."""
    code = extract_code(text)
    lines = code.splitlines(keepends=True)
    written = [i for i, line in enumerate(lines) if line.strip()]
    if not written or lines[written[0]][0] not in " \t":
        return f"{prefix}\n{code}"
    end = next((i for i in written if lines[i][0] not in " \t"), len(lines))
    return prefix + "".join(lines[:end])


def passes(program: str, config: SandboxConfig | None = None) -> bool:
    """Whether `program` runs to its end and exits with 0; a failed assertion or any failure of the run is a no. A
    marker, random per run and printed after the program's last line, tells a program that finished from code
    that exited with 0 early (`sys.exit(0)`, `os._exit(0)` before the tests run)."""
    end = secrets.token_hex(16)
    result = run(f"{program}\nprint({end!r})\n", config=config)
    return result.ok and result.stdout.rstrip().endswith(end)


def printed(program: str, config: SandboxConfig | None = None) -> str | None:
    """What `program` printed, stripped, if it ran clean; None if it failed in any way."""
    result = run(program, config=config)
    return result.stdout.strip() if result.ok else None


HARNESS = """
import ast, contextlib, io, math, sys

SOURCE = {source!r}
EXAMPLES = {examples!r}


def same(got, expected):
    if isinstance(got, float) or isinstance(expected, float):  # a docstring rounds what it shows
        numbers = isinstance(got, int | float) and isinstance(expected, int | float)
        return numbers and math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9)
    return bool(got == expected)


def one_line(text):
    text = " ".join(str(text).split())
    return text if len(text) <= 120 else text[:117] + "..."


def main():
    namespace = {{"__name__": "solution"}}  # not "__main__": its own demo block stays quiet
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # stdout is this harness's report alone
            exec(compile(SOURCE, "solution.py", "exec"), namespace)
    except BaseException as e:
        print(f"the code does not run: {{type(e).__name__}}: {{one_line(e)}}")
        return 1
    failed = 0
    for call, expected in EXAMPLES:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                got = eval(call, namespace)
            if same(got, ast.literal_eval(expected)):
                continue
            outcome = f"got {{one_line(repr(got))}}"
        except BaseException as e:
            outcome = f"raised {{type(e).__name__}}: {{one_line(e)}}"
        failed += 1
        print(f"{{call}}: expected {{expected}}, {{outcome}}", flush=True)
    print(f"{{len(EXAMPLES) - failed}} of {{len(EXAMPLES)}} examples passed")
    return 1 if failed else 0


sys.exit(main())
"""


def examples_program(code: str, examples: list[tuple[str, str]]) -> str:
    """A program that runs `code` (its own output silenced) and checks each (call, expected literal) example:
    one line per failure (`f(2): expected 4, got 5`, or what it raised), then `k of n examples passed`; it exits
    with 1 if any failed. The code is compiled from a string, so a syntax error is a reported failure too."""
    return HARNESS.format(source=code, examples=[tuple(e) for e in examples])


def failure_report(result: Execution) -> str:
    """One line on why an examples program failed: its first failing example, else the error's last line, else
    the sandbox's reason (a timeout, a killed process)."""
    if result.status == "exit" and result.stdout.strip():
        return result.stdout.strip().splitlines()[0]
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else result.detail or result.status


def examples_passed(result: Execution) -> int | None:
    """How many examples an examples program's run passed, from its last line; None if it never got there (the code
    does not run, a timeout, a killed process)."""
    lines = result.stdout.strip().splitlines()
    found = PASSED_RE.fullmatch(lines[-1]) if lines and result.status in ("ok", "exit") else None
    return int(found.group(1)) if found else None
