"""The vLLM backend of `relayrl serve` (`--backend vllm`): vLLM's own scheduler batches every request's rows
(continuous batching, paged attention, prefix caching); one thread here adds the jobs, steps the engine and
turns what each step gives into the app's `Update`s.

A row is one vLLM request (`n=1`), so each row gets its own seed from the job's (`row_seed`): a seeded request
repeats its samples whatever else runs. Streamed rows ask for deltas (vLLM holds back text that may still
become a stop string); the others for the final output only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from relayrl.generation.engines import GenerationConfig, engine_holding
from relayrl.generation.vllm_engine import row_seed
from relayrl.serving.backend import Job, QueuedBackend, TokenLogprob, Update


@dataclass
class Row:
    job: Job
    index: int  # prompt * n + sample, as the job's updates number it
    tokens: int = 0  # sampled so far


class VllmBackend(QueuedBackend):
    def __init__(self, model, tokenizer, cfg: GenerationConfig, max_batch: int = 32):
        super().__init__(max_batch)
        self.engine = engine_holding(cfg, model, tokenizer)
        self.core = self.engine.llm.llm_engine
        self.context_length = self.engine.max_model_len
        self.eos = tokenizer.eos_token_id
        # vLLM's CPU attention plans for the OpenMP thread count of the thread that built the engine, and a new
        # thread starts with the process's initial count ("Check failed: ... thread_num == thread_num", measured)
        self._threads = torch.get_num_threads()
        self._ids = itertools.count()
        self._rows: dict[str, Row] = {}  # vLLM request id -> the row it samples
        self._thread.start()

    def close(self) -> None:
        super().close()
        self.engine.close()

    def _loop(self) -> None:
        torch.set_num_threads(self._threads)
        super()._loop()

    def _admit(self) -> list[Job]:
        """Every job waiting: vLLM's scheduler decides when each row runs."""
        admitted = list(self._waiting)
        self._waiting.clear()
        return admitted

    def _step(self, admitted: list[Job]) -> None:
        for job in admitted:
            self._add(job)
        self._abort([rid for rid, row in self._rows.items() if row.job.cancelled.is_set()])
        for out in self.core.step():
            self._update(out)

    def _in_flight(self) -> int:
        return len(self._rows)

    def _running_jobs(self) -> list[Job]:
        return [r.job for r in self._rows.values()]

    def _drop_all(self) -> None:
        self._abort(list(self._rows))

    def _add(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        for index in range(job.rows):
            rid = f"{next(self._ids)}"
            params = SamplingParams(
                n=1,
                temperature=job.temperature,
                top_p=job.top_p,
                max_tokens=job.max_tokens,
                seed=None if job.seed is None else row_seed(job.seed, index),
                stop=list(job.stop),  # the text ends before a stop string, as the native engine's does
                stop_token_ids=[self.eos],
                logprobs=job.logprobs,
                output_kind=RequestOutputKind.DELTA if job.stream else RequestOutputKind.FINAL_ONLY,
            )
            self._rows[rid] = Row(job, index)
            self.core.add_request(rid, TokensPrompt(prompt_token_ids=job.prompts[index // job.n]), params)

    def _abort(self, rids: list[str]) -> None:
        if rids:
            self.core.abort_request(rids)
            for rid in rids:
                self._rows.pop(rid, None)

    def _update(self, out) -> None:
        row = self._rows.get(out.request_id)
        if row is None:  # aborted meanwhile
            return
        c, job = out.outputs[0], row.job
        row.tokens += len(c.token_ids)
        logprobs = []
        if job.logprobs is not None:
            for token, ranked in zip(c.token_ids, c.logprobs or [], strict=True):
                top = sorted((lp.rank, t, lp.logprob) for t, lp in ranked.items() if lp.rank <= job.logprobs)
                logprobs.append(TokenLogprob(token, ranked[token].logprob, [(t, lp) for _, t, lp in top]))
        reason = None
        if out.finished:
            reason = "length" if c.finish_reason == "length" else "stop"
            del self._rows[out.request_id]
        if c.text or logprobs or reason:
            job.emit(Update(row.index, c.text, logprobs, reason, row.tokens if reason else 0))
