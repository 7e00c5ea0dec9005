"""A task from a reasoning-gym procedural generator, scored by that generator's own verifier.

Entries are drawn in chunks of CHUNK from generator instances whose seeds are hashed from (task seed, stream,
chunk), so any index, negative ones included (the SFT stream), names one entry deterministically. Held-out
and training streams hash apart, and a training draw whose question is held out is redrawn from a further
stream: the two never share a question text.

The reference answer is a JSON record naming the generator, its config, seed, size and index: the scorer, a
module-level function run in spawned worker processes, regenerates the exact entry (metadata and all, which
JSON could not carry faithfully, e.g. tuples) and asks the generator's `score_answer`. reasoning-gym gives
partial credit (0.01 for a wrong number, a fraction for an answer buried in text); only full credit counts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from relayrl.schema import check, nonempty, setting
from relayrl.tasks.base import Item, template_problem

CHUNK = 500  # entries per generator instance: reasoning-gym's default size, which some generators precompute
_MAX_REDRAWS = 1000
_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER_RE = re.compile(r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", re.ASCII)
_CHAIN_RE = re.compile(r"-?\d+(?: [+-] -?\d+)+")


@dataclass
class ReasoningGymConfig:
    name: str = nonempty("basic_arithmetic")  # a reasoning-gym generator (reasoning_gym.factory.DATASETS)
    config: dict[str, Any] = field(default_factory=dict)  # the generator's config fields; not seed or size
    seed: int = 0
    heldout_size: int = setting(200, gt=0, le=10**6)  # a million: past any evaluation budget
    chat: bool = True  # wrap the prompt in the tokenizer's chat template, as a user message
    system: str = ""  # chat: an optional system message
    template: str = "{question}\nGive the final answer as <answer>ANSWER</answer>."
    lenient: bool = True  # no <answer> tag: read the last number, else the last line (the model's own habits)

    def rules(self) -> Iterator[tuple[str, str]]:
        if {"seed", "size"} & set(self.config):
            yield "config", "set the seed with task.reasoning_gym.seed; size is chunked"
        if problem := template_problem(self.template):
            yield "template", problem


def unknown_generator(name: str) -> str | None:
    """Why `name` is no reasoning-gym generator, or None (importing reasoning-gym takes a second: only when used)."""
    from reasoning_gym.factory import DATASETS

    return None if name in DATASETS else f"unknown generator {name!r}; known: {', '.join(DATASETS)}"


def extract_tagged(completion: str) -> str | None:
    """The content of the last <answer>...</answer>."""
    tags = _TAG_RE.findall(completion)
    return tags[-1].strip() if tags else None


def extract_lenient(completion: str) -> str | None:
    """The tagged answer, else the last number (commas dropped), else the last non-empty line."""
    tagged = extract_tagged(completion)
    if tagged is not None:
        return tagged
    numbers = _NUMBER_RE.findall(completion)
    if numbers:
        return numbers[-1].replace(",", "")
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else None


def score_tagged(completion: str, reference: str) -> float:
    return _score(extract_tagged(completion), reference)


def score_lenient(completion: str, reference: str) -> float:
    return _score(extract_lenient(completion), reference)


def _score(answer: str | None, reference: str) -> float:
    if answer is None:
        return 0.0
    dataset, entry = _entry(reference)
    try:
        score = dataset.score_answer(answer, entry)
    except Exception:  # a verifier choking on a model's malformed answer: that answer is wrong, not a crash
        return 0.0
    return float(score == 1.0)


@functools.lru_cache(maxsize=4096)
def _entry(reference: str) -> tuple[Any, dict]:
    """The generator and the entry a reference names (samples of one prompt share the regeneration)."""
    ref = json.loads(reference)
    dataset = _generator(ref["dataset"], json.dumps(ref["config"], sort_keys=True), ref["seed"], ref["size"])
    return dataset, dataset[ref["index"]]


@functools.lru_cache(maxsize=16)
def _generator(name: str, config_json: str, seed: int, size: int):
    """Recent generator instances: consecutive indices (a batch, a chunk) share one."""
    import reasoning_gym

    return reasoning_gym.create_dataset(name, **json.loads(config_json), seed=seed, size=size)


def _stream_seed(seed: int, stream: str, chunk: int) -> int:
    """31 bits, so generators that seed numpy with seed + index stay below 2**32."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}/{chunk}".encode()).digest()[:4], "big") >> 1


def worked_solution(entry: dict) -> str:
    """A short solution ending in the answer tag: left-to-right steps for a +/- chain, the expression for
    other arithmetic, else the tag alone."""
    answer = entry["answer"]
    expression = str(entry.get("metadata", {}).get("expression", ""))
    if _CHAIN_RE.fullmatch(expression):
        tokens = expression.split()
        acc, steps = int(tokens[0]), []
        for op, n in zip(tokens[1::2], tokens[2::2], strict=True):
            new = acc + int(n) if op == "+" else acc - int(n)
            steps.append(f"{acc} {op} {n} = {new}")
            acc = new
        if str(acc) == answer:
            return "\n".join(steps) + f"\n<answer>{answer}</answer>"
    if expression:
        return f"{expression} = {answer}\n<answer>{answer}</answer>"
    return f"<answer>{answer}</answer>"


class ReasoningGymTask:
    stop_strings: tuple[str, ...] = ("</answer>",)

    def __init__(self, cfg: ReasoningGymConfig):
        if problem := unknown_generator(cfg.name):
            raise ValueError(f"task.reasoning_gym.name: {problem}")
        check(cfg, "task.reasoning_gym.")
        self._config_json = json.dumps(cfg.config, sort_keys=True)
        try:  # the first held-out generator, built here so a bad config is reported by its field
            _generator(cfg.name, self._config_json, _stream_seed(cfg.seed, "heldout", 0), CHUNK)
        except (TypeError, AssertionError, ValueError) as e:
            raise ValueError(f"task.reasoning_gym.config for {cfg.name}: {e}") from None
        self.cfg = cfg
        self.name = f"reasoning_gym/{cfg.name}"
        self.scorer = score_lenient if cfg.lenient else score_tagged
        self.extract = extract_lenient if cfg.lenient else extract_tagged
        self._heldout: list[Item] = []
        seen: set[str] = set()
        draws = 0
        while len(self._heldout) < cfg.heldout_size:
            if draws >= 20 * cfg.heldout_size + 100:
                raise ValueError(
                    f"task.reasoning_gym: {cfg.name} gave only {len(seen)} distinct questions in {draws} draws; "
                    f"lower heldout_size ({cfg.heldout_size}) or widen the config"
                )
            item = self._item("heldout", draws)
            draws += 1
            if item.meta["question"] not in seen:
                seen.add(item.meta["question"])
                self._heldout.append(item)
        self._heldout_questions = seen

    def _item(self, stream: str, index: int) -> Item:
        chunk, offset = divmod(index, CHUNK)
        seed = _stream_seed(self.cfg.seed, stream, chunk)
        entry = _generator(self.cfg.name, self._config_json, seed, CHUNK)[offset]
        reference = {
            "answer": entry["answer"],
            "dataset": self.cfg.name,
            "config": self.cfg.config,
            "seed": seed,
            "size": CHUNK,
            "index": offset,
        }
        text = self.cfg.template.format(question=entry["question"])
        messages = (({"role": "system", "content": self.cfg.system},) if self.cfg.system else ()) + (
            {"role": "user", "content": text},
        )
        return Item(
            prompt=messages if self.cfg.chat else text,
            answer=json.dumps(reference),
            solution=worked_solution(entry),
            meta={"question": entry["question"]},
        )

    def train_item(self, index: int) -> Item:
        for redraw in range(_MAX_REDRAWS):
            item = self._item(f"train-{redraw}", index)
            if item.meta["question"] not in self._heldout_questions:
                return item
        raise ValueError(f"task.reasoning_gym: {_MAX_REDRAWS} draws for training item {index} were all held out")

    def heldout(self) -> list[Item]:
        return self._heldout
