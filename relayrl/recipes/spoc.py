"""SPOC (arXiv 2506.06923): PairSFT on the model's own solutions, then message-wise RL.

Before RL: the SFT warm start, then K solutions sampled per question from the warm model. Questions with
both right and wrong samples become PairSFT examples, balanced per question: a right solution followed by
a verification that says Yes; a wrong solution (masked out of the loss: the model should not learn to
make it), a verification that names the error and says No, a right solution of the same question, and
Yes. The data is saved in the `pair_sft` checkpoint, so a resumed run trains on the same examples.
RL then rewards each message (rewards/spoc.py) and spreads message-wise RLOO advantages over its tokens.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from rich.progress import track

from relayrl import phases
from relayrl.algorithms.sequences import Sequence
from relayrl.generation.messages import RESTART, Span, SpocFormat, token_messages
from relayrl.generation.sampler import encode_prompt, sample_texts
from relayrl.rewards.spoc import TeacherWriter, VerificationWriter, step_template
from relayrl.state import RunState
from relayrl.tasks.base import Item, Scorer

if TYPE_CHECKING:
    from relayrl.run import Run


class PairSFTError(ValueError):
    pass


@dataclass
class PairExample:
    prompt: str | tuple[dict, ...]
    messages: list[tuple[str, str, bool]]  # (role, text, trained); concatenated they make the completion

    @classmethod
    def from_json(cls, data: dict) -> PairExample:
        """From a checkpoint's run state, where tuples were saved as lists."""
        prompt = data["prompt"] if isinstance(data["prompt"], str) else tuple(data["prompt"])
        return cls(prompt, [tuple(m) for m in data["messages"]])


def build_pair_sft(
    items: list[Item], solutions: list[list[str]], correct: Scorer, write: VerificationWriter, fmt: SpocFormat
) -> list[PairExample]:
    """PairSFT examples from K sampled solutions per item: as many right as wrong ones per question."""

    def verification(item: Item, solution: str, ok: bool) -> tuple[str, str, bool]:
        return ("verification", fmt.verification(write(item, solution, ok), ok), True)

    examples = []
    for item, sols in zip(items, solutions, strict=True):
        scored = [(s, correct(s, item.answer) >= 1.0) for s in sols]
        right, wrong = [s for s, ok in scored if ok], [s for s, ok in scored if not ok]
        for r, w in zip(right, wrong, strict=False):  # the shorter list sets how many of each
            fixed = [("solution", RESTART + r, True), verification(item, r, True)]
            examples.append(PairExample(item.prompt, [("solution", r, True), verification(item, r, True)]))
            examples.append(PairExample(item.prompt, [("solution", w, False), verification(item, w, False), *fixed]))
    return examples


def to_sequence(example: PairExample, tokenizer) -> Sequence:
    """Token ids of the whole completion (+ EOS), with the loss mask set message by message."""
    text = "".join(t for _, t, _ in example.messages)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    spans, pos = [], 0
    for role, t, _ in example.messages:
        spans.append(Span(role, pos, pos + len(t)))
        pos += len(t)
    mask = [0.0] * len(ids)
    decode = partial(tokenizer.decode, skip_special_tokens=True)
    for m, (_, _, trained) in zip(token_messages(ids, decode, spans), example.messages, strict=True):
        mask[m.start : m.end] = [float(trained)] * (m.end - m.start)
    return Sequence(encode_prompt(tokenizer, example.prompt), ids, loss_mask=mask)


def writer(run: Run) -> VerificationWriter:
    s = run.cfg.spoc
    return TeacherWriter.from_pretrained(s.teacher) if s.writer == "teacher" else step_template


def sample_pair_sft(run: Run, show_progress: bool) -> tuple[list[PairExample], dict]:
    """K single solutions per question from the current model, made into PairSFT examples."""
    cfg, s, tok = run.cfg, run.cfg.spoc, run.tokenizer
    fmt = s.format()
    start = -1 - cfg.sft.steps * cfg.sft.batch_size  # negative indices after the warm start's: a stream of its own
    items = [run.task.train_item(start - i) for i in range(s.pair_questions)]
    single = dataclasses.replace(run.sampling, max_new_tokens=cfg.rollout.max_new_tokens, stop_rule=None)
    gen = torch.Generator().manual_seed(cfg.seed)
    per_batch = max(1, 256 // s.pair_samples)
    solutions, tokens = [], 0
    run.model.eval()
    for b in track(range(0, len(items), per_batch), description="PairSFT sampling", disable=not show_progress):
        chunk = items[b : b + per_batch]
        prompts = [encode_prompt(tok, it.prompt) for it in chunk for _ in range(s.pair_samples)]
        out = sample_texts(run.model, tok, prompts, single, gen)
        tokens += sum(len(o.completion_ids) for o in out)
        texts = [o.text for o in out]
        texts = [t[: fmt.parse(t)[0].end] for t in texts]  # a model that already verifies: its first solution
        solutions += [texts[i : i + s.pair_samples] for i in range(0, len(texts), s.pair_samples)]
    examples = build_pair_sft(items, solutions, run.task.scorer, writer(run), fmt)
    if not examples:
        raise PairSFTError(
            f"PairSFT: none of {len(items)} questions had both right and wrong samples; raise spoc.pair_questions, "
            "spoc.pair_samples or rollout.temperature, or change sft.steps"
        )
    right = sum(run.task.scorer(t, it.answer) >= 1.0 for it, ts in zip(items, solutions, strict=True) for t in ts)
    stats = {
        "questions": len(items),
        "questions_kept": len({str(e.prompt) for e in examples}),
        "examples": len(examples),
        "sample_accuracy": right / (len(items) * s.pair_samples),
        "sampled_tokens": tokens,
        "mean_solution_tokens": tokens / (len(items) * s.pair_samples),
    }
    return examples, stats


def prepare(run: Run, stop, show_progress: bool) -> None:
    """SFT warm start and PairSFT data (checkpoint `pair_sft`), PairSFT, then the RL state (checkpoint `sft`)."""
    t0 = time.perf_counter()
    if run.state is None:
        sft_steps = phases.warm_start(run, stop, show_progress)
        examples, stats = sample_pair_sft(run, show_progress)
        data = [dataclasses.asdict(e) for e in examples]
        run.state = RunState(
            "pair_sft", sft_seconds=time.perf_counter() - t0, sft_steps=sft_steps, pair_sft=stats, pair_sft_data=data
        )
        run.save("pair_sft")
        t0 = time.perf_counter()
    if run.state.phase != "pair_sft":
        return
    seqs = [to_sequence(PairExample.from_json(e), run.tokenizer) for e in run.state.pair_sft_data]
    random.Random(run.cfg.seed).shuffle(seqs)
    bs, s = run.cfg.sft.batch_size, run.cfg.spoc

    def batch(step: int) -> list[Sequence]:
        return [seqs[(step * bs + i) % len(seqs)] for i in range(bs)]

    phases.supervise(run, batch, s.pair_sft_steps, s.pair_sft_lr, "PairSFT", stop, show_progress)
    phases.start_rl(
        run, run.state.sft_seconds + time.perf_counter() - t0, run.state.sft_steps, pair_sft=run.state.pair_sft
    )
