"""Maths answer checking: relayrl extracts the final answer, math-verify (pinned 0.9.0) decides equivalence.

math-verify does the maths: LaTeX normalisation, parsing to sympy, equivalence (with its float rounding). This
module keeps only what it does not do:
- A hard timeout that works from any thread or process. math-verify's timeouts are signal.alarm (main thread
  only, and blind while sympy's C code holds the GIL), so they are off and every check runs in a forked child of
  a long-lived helper process that kills the child at the deadline: a hang costs one fork, not a restart.
- relayrl's extraction order (the README's `scorer: math`): the last \\boxed{} / \\fbox{}, else the last
  'answer is' / 'answer:' / '####', else the last number; and `reference_answer` for references that are worked
  solutions. math-verify's extraction ranks 'final answer is' above \\boxed, does not read GSM8K's '####', and
  runs regexes and sympy on the whole text; here every search is linear in the text, before any timeout applies.
- Input hygiene: empty, over-long (MAX_ANSWER_CHARS), brace-unbalanced or junk answers are not equivalent,
  without math-verify (which repairs '\\frac{1}{2' and can hang on hostile text); identical answers are.
- Plain numbers ('1,234', '0.75', '\\frac{3}{4}') go to math-verify in-process, the one grammar it reads in
  bounded time, sparing most checks the helper's round trip.
POSIX only (fork, select on pipes).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import unicodedata
import weakref
from collections import deque
from collections.abc import Callable

MAX_ANSWER_CHARS = 1000  # longer extracted answers count as absent / not equivalent, never reach sympy
DEFAULT_TIMEOUT = 2.0  # seconds for one math-verify check
_GRACE = 1.0  # extra wait for the helper itself (fork, pipes) before it is presumed stuck and killed
_CHILD_MEMORY = 2 << 30  # address space a check may add: a hostile answer must not take the machine down
_BOX_TRIES = 8  # at most this many trailing \boxed tried, so a megabyte of unclosed boxes stays cheap
_PHRASE_TRIES = 5

# ---------------------------------------------------------------------------------------------------------
# Extraction: every search is a literal find, a tail window or a regex without nested quantifiers, so time
# stays linear in the text however hostile it is.

_PHRASE_RE = re.compile(r"####|\banswer[ \t]{0,8}(?:is\b[ \t]{0,8}:?|:)", re.IGNORECASE)
_NUMBER = r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_NUMBER_RE = re.compile(_NUMBER, re.ASCII)  # ASCII: int() would also read other scripts' digits
_LEADING_NUMBER_RE = re.compile(rf"({_NUMBER})\s+[A-Za-z]{{2}}", re.ASCII)  # '42 apples', not '2x' or '1, 2'
_BARE_ARGUMENT_RE = re.compile(r"[^\s$]+")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")


def extract_answer(text: str) -> str | None:
    """The final answer: last \\boxed{...} / \\fbox{...}, else the last 'answer is' / 'answer:' / '####', else
    the last number. None when there is none, or when it is longer than MAX_ANSWER_CHARS."""
    marked = _marked_answer(text)
    return marked if marked is not None else _last_number(text)


def reference_answer(text: str) -> str:
    """A reference may be a bare answer ('\\frac{1}{2}', whose last number is not the answer) or a worked
    solution with a marker (GSM8K's '#### 72', MATH's \\boxed): use the marked part when there is one."""
    marked = _marked_answer(text)
    return marked if marked is not None else _clean(text)


def _marked_answer(text: str) -> str | None:
    boxed = _last_boxed(text)
    return boxed if boxed is not None else _last_phrase_answer(text)


def _last_boxed(text: str) -> str | None:
    end = len(text)
    for _ in range(_BOX_TRIES):
        b, f = text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end)
        start, name_len = (b, 6) if b >= f else (f, 5)
        if start < 0:
            return None
        content = _argument(text, start + name_len)
        if content is not None:
            content = _clean(content)
            if content and len(content) <= MAX_ANSWER_CHARS:
                return content
        end = start
    return None


def _argument(text: str, i: int) -> str | None:
    """The braced (balanced, at most MAX_ANSWER_CHARS) or bare ('\\boxed 5') argument starting at i."""
    limit = min(len(text), i + MAX_ANSWER_CHARS + 2)
    while i < limit and text[i] in " \t":
        i += 1
    if i >= limit:
        return None
    if text[i] != "{":
        if i == 0 or text[i - 1] not in " \t":  # '\boxedx' is another command, not a box
            return None
        m = _BARE_ARGUMENT_RE.match(text, i, limit)
        return m.group() if m else None
    depth, j = 0, i
    while j < limit:
        c = text[j]
        if c == "\\":
            j += 2  # \{ and \} are literal braces
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def _last_phrase_answer(text: str) -> str | None:
    last = deque(_PHRASE_RE.finditer(text), maxlen=_PHRASE_TRIES)
    while last:
        answer = _answer_after(text, last.pop().end())
        if answer:
            return answer
    return None


def _answer_after(text: str, i: int) -> str | None:
    rest = text[i : i + 2 * MAX_ANSWER_CHARS + 8].lstrip(" \t\n*:")
    for opener, closer in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if rest.startswith(opener):
            close = rest.find(closer, len(opener))
            newline = rest.find("\n", len(opener))
            if close > 0 and (opener in ("$$", "\\[") or newline < 0 or close < newline):
                return _bounded(_clean(rest[len(opener) : close]))
            if opener == "$":  # an unclosed '$' is money: 'The answer is $18.'
                rest = rest[1:]
            break
    line = rest.split("\n", 1)[0]
    m = _SENTENCE_END_RE.search(line)
    answer = line[: m.start()] if m else line
    lead = _LEADING_NUMBER_RE.match(answer)
    return _bounded(_clean(lead.group(1) if lead else answer))


def _last_number(text: str) -> str | None:
    """Scans a growing tail window that starts at whitespace (numbers hold none), so the common case reads
    only the end of a long text and the worst case stays linear."""
    window = 256
    while True:
        start = max(0, len(text) - window)
        if start > 0:
            start = max(text.rfind(" ", 0, start), text.rfind("\n", 0, start), 0)
        last = deque(_NUMBER_RE.finditer(text, start), maxlen=1)
        if last or start == 0:
            return _bounded(last[0].group()) if last else None
        window *= 4


def _clean(answer: str) -> str:
    prev = None
    while answer != prev:
        prev = answer
        answer = answer.strip().strip("$").rstrip(".").strip()
        for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(opener) and answer.endswith(closer):
                answer = answer[2:-2]
    return answer


def _bounded(answer: str) -> str | None:
    return answer if answer and len(answer) <= MAX_ANSWER_CHARS else None


# ---------------------------------------------------------------------------------------------------------
# In-process: input hygiene, and plain numbers, the one grammar math-verify reads in bounded time; all else
# goes to the helper. Equivalence itself is always math-verify's.

_PLAIN_NUMBER_RE = re.compile(
    r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\\[dt]?frac\{-?\d+\}\{-?\d+\}", re.ASCII
)  # '1,234.5', '3/4', '\frac{3}{4}'; nothing nested, no exponents: its digits bound sympy's work
_JUNK = frozenset(("Cc", "Cs", "Co", "Cn"))  # unicode categories: control, surrogate, private use, unassigned


def _balanced(s: str) -> bool:
    depth, i = 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
        i += 1
    return depth == 0


def _junk(s: str) -> bool:
    """Control, surrogate, private-use or unassigned characters: nothing math-verify could read as maths."""
    return any(unicodedata.category(c) in _JUNK for c in s)


def _in_process(pred: str, ref: str) -> bool | None:
    """True/False when settled without the helper, None when it must decide. Empty, over-long, unbalanced or junk
    answers are not equivalent (math-verify would repair '\\frac{1}{2', and could hang on the rest); identical
    ones are; two plain numbers go to math-verify here, which reads them in milliseconds."""
    if not pred or not ref or len(pred) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        return False
    a, b = _clean(pred), _clean(ref)
    if not a or not b:
        return False
    if a == b:
        return True
    if not (_balanced(a) and _balanced(b)) or _junk(a) or _junk(b):
        return False
    if _PLAIN_NUMBER_RE.fullmatch(a) and _PLAIN_NUMBER_RE.fullmatch(b):
        return verify_unguarded(a, b)
    return None


# math-verify's signal timeouts are off (they work on the main thread only); its warning that they are is noise
logging.getLogger("math_verify").setLevel(logging.ERROR)


def verify_unguarded(pred: str, ref: str) -> bool:
    """math-verify with its signal timeouts off: only for plain numbers, or under the helper's hard timeout."""
    from math_verify import parse, verify

    # Boxing makes parse read the whole answer as one LaTeX expression instead of hunting inside it.
    gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=None)
    target = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(gold and target and verify(gold, target, timeout_seconds=None))


# ---------------------------------------------------------------------------------------------------------
# The guarded helper process.


def _helper_main() -> None:
    """Helper loop: one JSON [pred, ref] line in, one byte line out (1, 0, T timeout, E error)."""
    check: Callable[[str, str], bool] = _load(sys.argv[1])
    timeout = float(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle; EOF ends us
    replies = os.dup(1)
    os.dup2(2, 1)  # stray prints from sympy/antlr must not corrupt the replies
    with contextlib.suppress(Exception):
        verify_unguarded("1", "1")  # pay lazy imports and grammar loading once, before forking children
    gc.freeze()  # fewer copy-on-write pages per fork
    os.write(replies, b"ready\n")
    while line := sys.stdin.buffer.readline():  # EOF: the parent is gone
        pred, ref = json.loads(line)
        os.write(replies, _check_in_child(check, pred, ref, timeout) + b"\n")


def _check_in_child(check: Callable[[str, str], bool], pred: str, ref: str, timeout: float) -> bytes:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = b"E"
        try:
            os.close(r)
            # The kernel's default SIGALRM action kills this child even if C code holds the GIL and the
            # helper is gone: nothing outlives the deadline by much.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, timeout + 1.0)
            _limit_memory()
            code = b"1" if check(pred, ref) else b"0"
        finally:
            with contextlib.suppress(BaseException):
                os.write(w, code)
            os._exit(0)
    os.close(w)
    try:
        if select.select([r], [], [], timeout)[0]:
            return os.read(r, 1) or b"E"
        os.kill(pid, signal.SIGKILL)
        return b"T"
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def _limit_memory() -> None:
    with contextlib.suppress(Exception):
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + _CHILD_MEMORY, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _load(path: str) -> Callable[[str, str], bool]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class _Helper:
    def __init__(self, check: str, timeout: float, start_timeout: float):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # as spawn passes sys.path
        code = f"from {__name__} import _helper_main; _helper_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, check, repr(timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._buffer = b""
        try:
            ready = self._readline(start_timeout)
        except EOFError:
            ready = None
        if ready != b"ready":
            self.kill()
            raise RuntimeError(f"maths checker helper did not start within {start_timeout} s (see its stderr)")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, pred: str, ref: str, wait: float) -> bytes | None:
        """The reply, or None when the helper did not answer within `wait`."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([pred, ref]).encode() + b"\n")
        self.proc.stdin.flush()
        return self._readline(wait)

    def _readline(self, wait: float) -> bytes | None:
        assert self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + wait
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError("maths checker helper exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self, wait: float = 1.0) -> None:
        """EOF lets the helper finish its check (bounded) and exit; kill if it does not."""
        with contextlib.suppress(Exception):
            self.proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait)
        self.kill()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                pipe.close()  # type: ignore[union-attr]


class MathChecker:
    """Equivalence with a hard timeout. Hard checks run one at a time per checker; concurrent callers queue."""

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        check: str = f"{__name__}:verify_unguarded",
        start_timeout: float = 60.0,
    ):
        self.timeout, self.check, self.start_timeout = timeout, check, start_timeout
        self.counts = {"fast": 0, "guarded": 0, "timeouts": 0, "errors": 0}
        self._helper: _Helper | None = None
        self._lock, self._count_lock = threading.Lock(), threading.Lock()
        _CHECKERS.add(self)

    def equivalent(self, pred: str, ref: str) -> bool:
        settled = _in_process(pred, ref)
        if settled is not None:
            self._count("fast")
            return settled
        self._count("guarded")
        with self._lock:
            reply = self._ask(pred, ref)
        if reply in (None, b"T"):
            self._count("timeouts")
        elif reply not in (b"1", b"0"):
            self._count("errors")
        return reply == b"1"

    def start(self) -> None:
        """Start the helper now, so the first hard check does not pay its start-up (about a second)."""
        with self._lock:
            self._ensure_helper()

    def close(self) -> None:
        with self._lock:
            if self._helper is not None:
                self._helper.close()
                self._helper = None

    def _ask(self, pred: str, ref: str) -> bytes | None:
        try:
            helper = self._ensure_helper()
            reply = helper.ask(pred, ref, self.timeout + _GRACE)
        except Exception:
            reply = b"E"
        if reply not in (b"1", b"0", b"T") and self._helper is not None:
            self._helper.kill()  # stuck or broken: a fresh one next time
            self._helper = None
        return reply

    def _ensure_helper(self) -> _Helper:
        if self._helper is None or not self._helper.alive():
            self._helper = _Helper(self.check, self.timeout, self.start_timeout)
        return self._helper

    def _count(self, key: str) -> None:
        with self._count_lock:
            self.counts[key] += 1

    def _after_fork_in_child(self) -> None:
        """The helper and its pipes belong to the parent; a forked child starts its own when it needs one."""
        self._helper = None
        self._lock, self._count_lock = threading.Lock(), threading.Lock()


_CHECKERS: weakref.WeakSet[MathChecker] = weakref.WeakSet()
_default: MathChecker | None = None
_default_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for checker in list(_CHECKERS):
        checker._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def default_checker() -> MathChecker:
    """The process-wide checker behind equivalent() and math_scorer()."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathChecker()
        return _default


def configure(timeout: float = DEFAULT_TIMEOUT, start_timeout: float = 60.0) -> MathChecker:
    """Replace the process-wide checker. Per process: scorer worker processes keep their own default."""
    global _default
    with _default_lock:
        old, _default = _default, MathChecker(timeout, start_timeout=start_timeout)
    if old is not None:
        old.close()
    return _default


@atexit.register
def _close_all() -> None:
    for checker in list(_CHECKERS):
        checker.close()


def equivalent(pred: str, ref: str) -> bool:
    """Whether answer `pred` matches reference answer `ref` (both already extracted). False on timeout."""
    return default_checker().equivalent(pred, ref)


def math_scorer(completion: str, answer: str) -> float:
    """Task Scorer: 1.0 when the completion's final answer matches the reference, else 0.0."""
    pred = extract_answer(completion)
    return float(pred is not None and equivalent(pred, reference_answer(answer)))
