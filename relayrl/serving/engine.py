"""The native backend: one scheduler thread batches every request's rows into each decode step of the model.

Each step, rows of cancelled jobs leave the batch; the rows in flight decode one token together (one forward
pass); jobs waiting in line join while the batch has room (rows, and KV-cache tokens), their prompts read in
one prefill whose cache is joined to the batch's, left-padded as the sampler pads; then every row draws its
token and a row that ends leaves at once. So requests that arrive together share forward passes, a short one
is never held up by a long one, and a disconnected client's rows are gone by the next step.

Every job draws with its own generator, so a seeded request gets the same samples whatever else is in the batch
(up to the float order of batched matmuls), and a lone request for one sample gets exactly what `sample` gives
(the same prefill, decode and `next_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from relayrl.generation.sampler import distinct, last_logits, left_padded, next_tokens
from relayrl.serving.backend import Job, JobRejected, QueuedBackend, TokenLogprob, Update
from relayrl.serving.text import RowText


@dataclass
class Run:
    """A job being generated: its generator, shared by its rows."""

    job: Job
    generator: torch.Generator


@dataclass
class Row:
    run: Run
    index: int  # prompt * n + sample, as the job's updates number it
    text: RowText
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not sent yet


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` widened to `width` along `dim` (-1: a mask, -2: keys or values) with zeros before its columns."""
    return F.pad(t, (0, 0) * (-1 - dim) + (width - t.shape[dim], 0))


class Engine(QueuedBackend):
    def __init__(self, model, tokenizer, max_batch: int = 32, max_kv_tokens: int = 65536):
        super().__init__(max_batch)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.context_length: int = model.config.max_position_embeddings
        self.max_kv_tokens = max_kv_tokens
        self.device = next(model.parameters()).device
        self._reset()
        self._thread.start()

    def _check(self, job: Job) -> None:
        if job.rows * (max(map(len, job.prompts)) + job.max_tokens) > self.max_kv_tokens:
            raise JobRejected(
                "max_tokens",
                f"{job.rows} samples x (prompt + max_tokens {job.max_tokens}) exceed this server's"
                f" {self.max_kv_tokens} KV-cache tokens (relayrl serve --max-kv-tokens)",
            )

    def _in_flight(self) -> int:
        return len(self._rows)

    def _running_jobs(self) -> list[Job]:
        return [r.run.job for r in self._rows]

    def _drop_all(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """An empty batch: the rows in flight, their KV cache, attention mask (one column ahead of the cache:
        the token each row reads next), positions and next tokens."""
        self._rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask = self._positions = self._tokens = None

    def _admit(self) -> list[Job]:
        """Jobs from the head of the line, in order, while the batch has room for them."""
        admitted: list[Job] = []
        while self._waiting:
            job = self._waiting[0]
            if not job.cancelled.is_set() and not self._fits([*admitted, job]):
                break
            self._waiting.popleft()
            if not job.cancelled.is_set():
                admitted.append(job)
        return admitted

    def _fits(self, jobs: list[Job]) -> bool:
        """Whether the batch stays within max_batch rows and, at the widest it could grow to (every row padded
        to the longest row's end), within max_kv_tokens."""
        rows = len(self._rows) + sum(j.rows for j in jobs)
        width = 0 if self._mask is None else self._mask.shape[1]
        joined = max(width, *(len(p) for j in jobs for p in j.prompts))
        ends = [width + r.run.job.max_tokens - len(r.ids) for r in self._rows]
        ends += [joined + j.max_tokens for j in jobs]
        return rows <= self.max_batch and rows * max(ends) <= self.max_kv_tokens

    @torch.no_grad()
    def _step(self, admitted: list[Job]) -> None:
        self._keep([i for i, r in enumerate(self._rows) if not r.run.job.cancelled.is_set()])
        logits = []
        if self._rows:
            logits.append(last_logits(self.model, self._tokens[:, None], self._mask, self._positions, self._cache))
        if admitted:
            logits.append(self._prefill(admitted))
        if not logits:
            return
        tokens, ended = self._sample(torch.cat(logits))
        self._tokens = torch.tensor(tokens, device=self.device)
        self._keep([i for i in range(len(self._rows)) if i not in ended])
        if self._rows:
            self._mask = F.pad(self._mask, (0, 1), value=1)
            self._positions = self._positions + 1

    def _prefill(self, jobs: list[Job]) -> torch.Tensor:
        """Read the jobs' prompts (each distinct one once), add their rows and caches to the batch, and return
        the rows' first logits."""
        unique, copies = distinct([p for j in jobs for p in j.prompts for _ in range(j.n)])
        input_ids, mask, positions = left_padded(unique, self.tokenizer.pad_token_id, self.device)
        cache = DynamicCache()
        logits = last_logits(self.model, input_ids, mask, positions, cache)
        copies = torch.tensor(copies, device=self.device)
        cache.batch_select_indices(copies)
        mask, positions = mask[copies], positions[copies, -1:]
        if self._rows:
            width = max(self._mask.shape[1], mask.shape[1])
            for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)])
                mine.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)])
            mask = torch.cat([_pad_left(self._mask, width, -1), _pad_left(mask, width, -1)])
            positions = torch.cat([self._positions, positions])
        else:
            self._cache = cache
        self._mask, self._positions = mask, positions
        for job in jobs:
            generator = torch.Generator(self.device)
            if job.seed is None:
                generator.seed()
            else:
                generator.manual_seed(job.seed)
            run = Run(job, generator)
            self._rows += [Row(run, i, RowText(self._decode, job.stop)) for i in range(job.rows)]
        return logits[copies]

    def _sample(self, logits: torch.Tensor) -> tuple[list[int], set[int]]:
        """Each row's next token, drawn with its job's parameters and generator; the updates sent; the rows that
        ended."""
        groups: dict[int, tuple[Run, list[int]]] = {}
        for i, row in enumerate(self._rows):
            groups.setdefault(id(row.run), (row.run, []))[1].append(i)
        tokens, ended = [0] * len(self._rows), set()
        for run, rows in groups.values():
            job = run.job
            scaled = logits[rows] / (job.temperature or 1.0)  # as `sample`: log-probabilities of logits / T
            chosen = next_tokens(scaled, job.temperature, job.top_p, run.generator)
            logp = scaled.log_softmax(-1)
            picked = logp.gather(-1, chosen[:, None])[:, 0].tolist()
            top = logp.topk(job.logprobs) if job.logprobs else None
            for k, (i, token) in enumerate(zip(rows, chosen.tolist(), strict=True)):
                tokens[i] = token
                row = self._rows[i]
                row.ids.append(token)
                if job.logprobs is not None:
                    best = [] if top is None else zip(top.indices[k].tolist(), top.values[k].tolist(), strict=True)
                    row.logprobs.append(TokenLogprob(token, picked[k], list(best)))
                if self._advance(row, token):
                    ended.add(i)
        return tokens, ended

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _advance(self, row: Row, token: int) -> bool:
        """Send what the row's new token makes ready; True if it ended the row. The text is decoded at every
        token only when it is streamed or searched for stop strings; otherwise once, at the end."""
        job = row.run.job
        watched = job.stream or bool(job.stop)
        stopped = token == self.tokenizer.eos_token_id or (watched and row.text.update(row.ids))
        reason = "stop" if stopped else "length" if len(row.ids) == job.max_tokens else None
        if reason and not watched:
            row.text.update(row.ids)
        if reason or job.stream:
            text = row.text.release(final=reason is not None)
            if text or row.logprobs or reason:
                job.emit(Update(row.index, text, row.logprobs, reason, len(row.ids) if reason else 0))
                row.logprobs = []
        return reason is not None

    def _keep(self, keep: list[int]) -> None:
        """Only rows `keep` stay in the batch; the cache drops the columns that every remaining row pads."""
        if len(keep) == len(self._rows):
            return
        if not keep:
            return self._reset()
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._rows = [self._rows[i] for i in keep]
        mask, self._positions, self._tokens = self._mask[index], self._positions[index], self._tokens[index]
        first = int(mask.any(0).int().argmax())
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        self._mask = mask[:, first:]
