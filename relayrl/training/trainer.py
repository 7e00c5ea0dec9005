"""The trainer: algorithm-blind except for the loss it is handed per token.

Batches are built from token ids (never re-tokenized text). Log-probabilities are computed
only on the tokens that count, with the LM head applied in checkpointed chunks so the full
vocabulary logits are never held for the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from relayrl.adapters import adapters_off, causal_lm, is_adapted, trained_parameters
from relayrl.algorithms import advantages, losses
from relayrl.algorithms.sequences import Sequence
from relayrl.executors.weights import flatten, load_flat, whole
from relayrl.generation.sampler import distinct
from relayrl.hf_compat import CACHE, cache_of
from relayrl.schema import choice, non_negative, positive, setting


@dataclass
class OptimConfig:
    lr: float = positive(1e-3)
    weight_decay: float = non_negative(0.0)
    betas: tuple[float, float] = setting((0.9, 0.99), ge=0, lt=1)
    grad_clip: float = positive(1.0)  # always applied: 0 would zero every gradient
    warmup_steps: int = non_negative(10)  # linear learning-rate warm-up: a fresh Adam's first steps are full-size
    micro_batch_tokens: int = positive(16384)  # padded tokens per forward/backward; 1024 suits 100M+ models
    # the samples of one prompt run its tokens through the model once (their rows continue its KV cache): the
    # same gradient, with the prompt's share of the work divided by the samples per prompt (not with FSDP2)
    share_prompts: bool = True
    # a step whose loss or gradient is not finite is skipped and counted; this many in a row stop the run
    max_nonfinite_steps: int = positive(3)


PER_TOKEN_RETURNS = ("gae", "reinforce_pp", "reinforce_pp_baseline")  # the advantages kl_in_reward can go into


@dataclass
class AlgorithmConfig:
    """An algorithm is an advantage estimator, a policy loss and an aggregation (docs/algorithms.md names the
    settings that reproduce each paper)."""

    # grpo: (r - group mean) / group std; dr_grpo: without the std; rloo: leave-one-out; reinforce: r - batch mean;
    # reinforce_pp: r normalised over the batch; reinforce_pp_baseline: r - group mean, then normalised over the batch;
    # gae: PPO's learned value model and GAE over the tokens
    advantage: str = choice("grpo", "rloo", "reinforce", "dr_grpo", "reinforce_pp", "reinforce_pp_baseline", "gae")
    gamma: float = setting(1.0, ge=0, le=1)  # gae: the discount per token
    lam: float = setting(0.95, ge=0, le=1)  # gae: lambda, from the one-step TD error (0) to the Monte-Carlo return (1)
    # gae: separate (a copy of the policy's backbone with a head, its own AdamW and backward) or shared (a head on
    # the policy's own final hidden states, trained in the policy's loss and optimizer)
    value_model: str = choice("separate", "shared")
    # shared: the value loss's weight beside the policy's; 0.1 as TRL's PPO with its value head (vf_coef), not the 0.5
    # of small networks trained from scratch: the regression pulls on the features the policy samples from
    value_coef: float = positive(0.1)
    value_lr: float = non_negative(0.0)  # gae: the critic's (shared: the head's) learning rate; 0: optim.lr
    # gae (InstructGPT), reinforce_pp and reinforce_pp_baseline (REINFORCE++): the kl_coef penalty goes into every
    # token's reward, not the loss
    kl_in_reward: bool = False
    # aipo: min(pi/mu, rho) A log pi; ppo: clipped ratio; gspo: clipped sequence ratio; cispo: clipped weight
    loss: str = choice("aipo", "ppo", "gspo", "cispo")
    rho: float = positive(4.0)  # AIPO truncation of pi/mu
    # ppo, gspo: the ratio's clip below 1 (and above, if clip_eps_high is 0); cispo: the weight's, >= 1 for none
    clip_eps: float = non_negative(0.2)
    clip_eps_high: float = non_negative(0.0)  # above 1; 0: clip_eps. DAPO's clip-higher: 0.28 over clip_eps 0.2
    dual_clip: float = non_negative(0.0)  # ppo: c > 1 floors the surrogate at c A for A < 0 (3 in the paper); 0: off
    kl_coef: float = non_negative(0.0)  # k3 KL to the reference (initial) policy
    # token: every token weighs the same; sequence: every sequence; constant: token sums / aggregation_length
    aggregation: str = choice("token", "sequence", "constant")
    aggregation_length: int = non_negative(0)  # constant's normaliser; 0: the generation budget (max_new_tokens)
    # the log-probs the loss's ratio is taken against: engine (the sampler's mu: corrects staleness and the
    # engine's numerics) or trainer (the trainer's own, detached: the ratio is 1, no correction)
    behaviour_logprobs: str = choice("engine", "trainer")
    # behaviour_logprobs=trainer: weigh each token by pi/mu from the engine's mu (TIS truncates it at
    # correction_threshold, MIS masks what lies past it), per token or per sequence
    correction: str = choice("none", "truncate", "mask")
    correction_level: str = choice("token", "sequence")
    correction_threshold: float = positive(2.0)
    # a rollout whose advantage is 0 on every token (its group all right or all wrong) adds no gradient when
    # kl_coef is 0, only tokens to the loss's mean: not training on it saves its forward and backward and
    # weighs the informative tokens as DAPO's dynamic sampling does (without resampling)
    drop_zero_advantage: bool = False
    # DAPO: draw further batches until prompts_per_step groups of differing rewards are in hand (the rest are
    # left out), at most dynamic_max_batches batches a step
    dynamic_sampling: bool = False
    dynamic_max_batches: int = positive(4)
    overlong_buffer: int = non_negative(0)  # DAPO's soft length penalty over the budget's last this many tokens
    overlong_penalty: float = non_negative(1.0)  # the penalty at the budget
    overlong_filter: bool = False  # leave truncated rollouts out of the loss (their group's advantages unchanged)

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.loss == "gspo" and self.aggregation != "sequence":
            yield "aggregation", f"gspo's objective is a mean over sequences; use sequence (got {self.aggregation})"
        if self.dual_clip and self.loss != "ppo":
            yield "dual_clip", f"dual-clip bounds PPO's clipped ratio; it needs loss=ppo (got {self.loss})"
        if self.dual_clip and self.dual_clip <= 1:
            yield "dual_clip", f"must be > 1 (the floor is c A, below the clipped surrogate); got {self.dual_clip}"
        if self.kl_in_reward and (self.advantage not in PER_TOKEN_RETURNS or self.kl_coef == 0):
            yield (
                "kl_in_reward",
                "puts kl_coef's penalty in per-token returns: it needs advantage=gae, reinforce_pp or"
                f" reinforce_pp_baseline (got {self.advantage}), and kl_coef > 0",
            )
        if self.drop_zero_advantage and (self.advantage == "gae" or self.kl_in_reward):
            yield (
                "drop_zero_advantage",
                "a critic's or a KL penalty's advantages are not 0 for a group all right or wrong",
            )
        if self.value_model == "shared" and self.advantage != "gae":
            yield "value_model", f"a value head serves GAE: it needs advantage=gae (got {self.advantage})"
        if self.correction != "none" and self.behaviour_logprobs != "trainer":
            yield (
                "correction",
                "corrects toward the engine's mu; the ratio already uses it unless behaviour_logprobs=trainer",
            )

    @property
    def clip_high(self) -> float:
        return self.clip_eps_high or self.clip_eps


def _token_logprobs(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = head(hidden).float() / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def hidden_states(
    backbone: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The backbone's last hidden states of the rows, each continuing its `prefix` row's KV cache if given."""
    extra = {}
    if prefix is not None:
        cache = cache_of(backbone(input_ids=prefix["ids"], attention_mask=prefix["mask"], use_cache=True))
        cache.batch_select_indices(prefix["rows"])
        attention_mask = torch.cat([prefix["mask"][prefix["rows"]], attention_mask], dim=1)
        extra = {CACHE: cache, "position_ids": prefix["positions"]}
    return backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def sequence_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    where: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    prefix: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """log pi(token_{j+1} | tokens_<=j) at the (B, L-1) positions `where`; zeros elsewhere.

    `prefix` (`collate(share_prompts=True)`): the rows continue these prefixes, each run once and its KV cache
    handed to every row that continues it (the gradient flows back through the cache to the shared tokens)."""
    return policy_outputs(model, input_ids, attention_mask, where, temperature, chunk, prefix)[0]


def policy_outputs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    where: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    prefix: dict[str, torch.Tensor] | None = None,
    value_head: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`sequence_logprobs`, and with `value_head` the values it gives from the same final hidden states (PPO's value
    head on the policy's backbone), at the same positions."""
    model = causal_lm(model)
    hidden = hidden_states(model.base_model, input_ids, attention_mask, prefix)
    hidden, targets = hidden[:, :-1][where], input_ids[:, 1:][where]
    head = model.get_output_embeddings()
    # more than one chunk: recompute each chunk's logits in backward rather than keep them all
    recompute = torch.is_grad_enabled() and hidden.shape[0] > chunk
    parts = [
        checkpoint(
            _token_logprobs, head, hidden[i : i + chunk], targets[i : i + chunk], temperature, use_reentrant=False
        )
        if recompute
        else _token_logprobs(head, hidden[i : i + chunk], targets[i : i + chunk], temperature)
        for i in range(0, hidden.shape[0], chunk)
    ]
    logp = _placed(torch.cat(parts) if parts else hidden.new_zeros(0), where)
    return logp, None if value_head is None else _placed(value_head(hidden).squeeze(-1), where)


def _placed(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Per-position `values` (float32) at the positions `where`, zeros elsewhere."""
    out = torch.zeros(where.shape, dtype=torch.float32, device=where.device)
    out[where] = values.float()
    return out


def _value_head(model: PreTrainedModel) -> torch.nn.Linear:
    """hidden state -> value, in the model's dtype and device; zeros at the start, so the first advantages are the
    returns."""
    weight = next(model.parameters())
    head = torch.nn.Linear(model.config.hidden_size, 1, dtype=weight.dtype, device=weight.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def shareable(seqs: list[Sequence]) -> bool:
    """Whether prompts can be shared: some prompt is repeated, and none is so short that its prefix is empty."""
    return len(distinct([s.prompt_ids for s in seqs])[0]) < len(seqs) and all(len(s.prompt_ids) > 1 for s in seqs)


def collate(seqs: list[Sequence], pad_id: int, device: torch.device, share_prompts: bool = False) -> dict:
    """Right-padded prompt+completion; per-token fields aligned with the shifted targets.

    `share_prompts`: each distinct prompt but its last token becomes one row of `prefix` (run once), and each
    sequence's row holds only that last token and its completion, at positions that continue the prefix."""
    cut = [len(s.prompt_ids) - 1 if share_prompts else 0 for s in seqs]
    rows = [s.prompt_ids[c:] + s.completion_ids for s, c in zip(seqs, cut, strict=True)]
    width = max(len(r) for r in rows)
    b = len(seqs)
    ids, attn = _right_padded(rows, width, pad_id)
    mask, mu, adv, rewards = (torch.zeros((b, width - 1)) for _ in range(4))
    for i, s in enumerate(seqs):
        p, c = len(s.prompt_ids) - cut[i], len(s.completion_ids)
        span = slice(p - 1, p + c - 1)  # logits at position j predict token j+1
        mask[i, span] = torch.tensor(s.loss_mask) if s.loss_mask is not None else 1.0
        if s.behaviour_logprobs is not None:
            mu[i, span] = torch.tensor(s.behaviour_logprobs)
        if s.advantages is not None:
            adv[i, span] = torch.tensor(s.advantages)
        if s.rewards is not None:
            rewards[i, span] = torch.tensor(s.rewards)
    staleness = torch.tensor([s.staleness for s in seqs])[:, None]
    out = {"input_ids": ids, "attention_mask": attn, "mask": mask, "mu": mu, "adv": adv, "staleness": staleness}
    out["rewards"] = rewards
    if share_prompts:
        prompts, rows_prompt = distinct([s.prompt_ids for s in seqs])
        prefix_ids, prefix_mask = _right_padded([list(p[:-1]) for p in prompts], max(map(len, prompts)) - 1, pad_id)
        out["prefix"] = {
            "ids": prefix_ids,
            "mask": prefix_mask,
            "rows": torch.tensor(rows_prompt),
            "positions": torch.tensor(cut)[:, None] + torch.arange(width),
        }
    return _to(out, device)


def _right_padded(rows: list[list[int]], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    return ids, attn


def _to(tensors: dict, device: torch.device) -> dict:
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in tensors.items()}


def micro_batches(seqs: list[Sequence], token_budget: int, share_prompts: bool = False) -> list[list[Sequence]]:
    """Consecutive groups whose padded size stays within the budget: rows x longest row, where with
    `share_prompts` a row is a prompt's last token and a completion, and each distinct prompt adds its prefix."""
    groups: list[list[Sequence]] = []
    width, prefixes, prefix_width = 0, set(), 0
    for s in seqs:
        n = len(s.completion_ids) + (1 if share_prompts else len(s.prompt_ids))
        key, pw = (tuple(s.prompt_ids), len(s.prompt_ids) - 1) if share_prompts else ((), 0)
        cost = max(width, n) * (len(groups[-1]) + 1) + len(prefixes | {key}) * max(prefix_width, pw) if groups else 0
        if not groups or cost > token_budget:
            groups.append([])
            width, prefixes, prefix_width = 0, set(), 0
        groups[-1].append(s)
        width, prefix_width = max(width, n), max(prefix_width, pw)
        prefixes.add(key)
    return groups


def computed_tokens(seqs: list[Sequence], share_prompts: bool) -> int:
    """Tokens the model runs (padding aside): every row's whole sequence, or with shared prompts each distinct
    prompt once plus every completion."""
    if not share_prompts:
        return sum(len(s.prompt_ids) + len(s.completion_ids) for s in seqs)
    return sum(map(len, distinct([s.prompt_ids for s in seqs])[0])) + sum(len(s.completion_ids) for s in seqs)


def _policy_loss(
    logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, a: AlgorithmConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token loss of `a.loss` against the log-probs `old`, and the ratio its clip acts on (detached)."""
    if a.loss == "aipo":
        per_token = losses.aipo(logp, old, adv, a.rho)
    elif a.loss == "ppo":
        per_token = losses.ppo_clip(logp, old, adv, a.clip_eps, a.clip_high, a.dual_clip)
    elif a.loss == "gspo":
        per_token = losses.gspo(logp, old, adv, mask, a.clip_eps, a.clip_high)
        return per_token, losses.sequence_ratio(logp, old, mask).detach().expand_as(logp)
    else:
        per_token = losses.cispo(logp, old, adv, a.clip_eps, a.clip_high)
    return per_token, torch.exp(logp - old).detach()


def _clipped(ratio: torch.Tensor, adv: torch.Tensor, algo: AlgorithmConfig) -> torch.Tensor:
    """Tokens whose gradient the loss bounds: AIPO's weight truncated at rho; CISPO's weight clipped on either side;
    PPO's and GSPO's ratio past the clip on the side where the clip binds (above 1 + eps_high with a positive
    advantage, below 1 - eps with a negative one, or past the dual clip with a negative one)."""
    if algo.loss == "aipo":
        return (ratio > algo.rho).float()
    above, below = ratio > 1 + algo.clip_high, ratio < 1 - algo.clip_eps
    if algo.loss == "cispo":
        return (above | below).float()
    dual = (ratio > algo.dual_clip) & (adv < 0) if algo.dual_clip else torch.zeros_like(above)
    return ((above & (adv > 0)) | (below & (adv < 0)) | dual).float()


# metric -> (the summed statistic, the token count it is a mean over)
TOKEN_MEANS = {
    "ratio_mean": ("ratio", "tokens"),
    "clipped_mean": ("clipped", "tokens"),
    "kl_mean": ("kl", "tokens"),
    "is_weight_mean": ("is_weight", "tokens"),
    "value_loss": ("value_loss", "tokens"),
    "offpolicy_logprob_abs": ("offpolicy_abs", "tokens"),
    "mismatch_logprob_abs": ("mismatch_abs", "current_tokens"),
    "mismatch_kl": ("mismatch_k3", "current_tokens"),
}


FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


class TokenLogprobs(torch.nn.Module):
    """The model as data parallelism sees it: forward = log-probabilities of the tokens that count, and with a
    shared value head its values (None without), so that DDP and FSDP2 reduce the head's gradients with the model's.
    The head is not part of `model`: generators never receive it."""

    def __init__(self, model: PreTrainedModel, value_head: bool = False):
        super().__init__()
        self.model = model
        self.value_head = _value_head(model) if value_head else None

    def forward(
        self, input_ids, attention_mask, where, temperature: float, prefix=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return policy_outputs(
            self.model, input_ids, attention_mask, where, temperature, prefix=prefix, value_head=self.value_head
        )


class ValueModel(torch.nn.Module):
    """PPO's critic: a copy of the policy's backbone and a linear head, one value per token (the value of the state
    before the token it predicts, aligned with the log-probs). A model of its own, as in OpenRLHF and verl, so its
    regression does not pull on the policy's features; its head starts at 0, so the first advantages are returns."""

    def __init__(self, policy: PreTrainedModel):
        super().__init__()
        self.backbone = copy.deepcopy(causal_lm(policy).base_model)  # with LoRA: adapters of its own to train
        self.head = _value_head(policy)

    def forward(self, input_ids, attention_mask, where, prefix=None) -> torch.Tensor:
        hidden = hidden_states(self.backbone, input_ids, attention_mask, prefix)[:, :-1][where]
        return _placed(self.head(hidden).squeeze(-1), where)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(values: list[float], op=None) -> list[float]:
    """Sum (or `op`) over the data-parallel ranks (the values themselves on one rank)."""
    if _world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


class Trainer:
    """One optimizer step per batch. Under torch.distributed (the default group, K ranks) each rank steps on
    its share of the global batch, with its model in DDP (`parallel="ddp"`) or sharded by FSDP2 (`"fsdp2"`:
    parameters, gradients and optimizer state split over the ranks); normalisers are global, so the update
    equals one rank's on the whole batch."""

    def __init__(
        self,
        model: PreTrainedModel,
        optim: OptimConfig,
        algo: AlgorithmConfig,
        pad_id: int,
        temperature: float = 1.0,
        ref_model: PreTrainedModel | None = None,
        parallel: str = "ddp",
        offload: bool = False,
    ):
        if algo.aggregation == "constant" and not algo.aggregation_length:
            raise ValueError("algorithm.aggregation=constant needs aggregation_length (build.trainer sets the budget)")
        if algo.kl_coef > 0 and ref_model is None and not is_adapted(model):
            raise ValueError("algorithm.kl_coef > 0 needs a reference model (with LoRA: the base, adapters off)")
        self.model, self.optim_cfg, self.algo, self.pad_id = model, optim, algo, pad_id
        self.temperature, self.ref_model = temperature, ref_model
        self.device = next(model.parameters()).device
        self.offload_optimizer = offload and parallel != "fsdp2"  # FSDP2 offloads through its policy
        self.sharded = _world() > 1 and parallel == "fsdp2"
        self.offload_policy = CPUOffloadPolicy() if offload else OffloadPolicy()  # offload: shards in host memory
        # PPO with GAE: a critic copied from the policy before either is sharded, with an optimizer of its own; or a
        # value head on the policy's backbone, inside the module data parallelism wraps, in the policy's optimizer
        shared = algo.advantage == "gae" and algo.value_model == "shared"
        value_lr = algo.value_lr or optim.lr
        self.critic = ValueModel(model) if algo.advantage == "gae" and not shared else None
        policy = TokenLogprobs(model, value_head=shared)
        self.value_head = policy.value_head
        self.logprobs = self._distributed(policy, model)
        self.values = self._distributed(self.critic, model) if self.critic is not None else None
        groups = [{"params": trained_parameters(model)}]
        if self.value_head is not None:
            groups.append({"params": list(self.value_head.parameters()), "lr": value_lr})
        self.optimizer, self.scheduler = self._adamw(groups, optim.lr)
        if self.critic is not None:
            critic_params = [p for p in self.critic.parameters() if p.requires_grad]
            self.critic_optimizer, self.critic_scheduler = self._adamw(critic_params, value_lr)

    def _distributed(self, module: torch.nn.Module, model: PreTrainedModel) -> torch.nn.Module:
        """`module` as data parallelism runs it: FSDP2 makes each decoder layer a unit and the rest (embeddings,
        norm, heads) the root's; DDP wraps it whole."""
        if self.sharded:
            for layer in [m for m in module.modules() if type(m).__name__ in (model._no_split_modules or [])]:
                fully_shard(layer, offload_policy=self.offload_policy)
            return fully_shard(module, offload_policy=self.offload_policy)
        if _world() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None  # CUDA: untested here
            return DistributedDataParallel(module, device_ids=device_ids)
        return module

    def _adamw(self, params, lr: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        o, warmup = self.optim_cfg, self.optim_cfg.warmup_steps
        optimizer = torch.optim.AdamW(params, lr=lr, betas=o.betas, weight_decay=o.weight_decay)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / (warmup + 1)))

    def weights(self) -> torch.Tensor:
        """What training changed, as the generators receive it: every weight, or with LoRA the adapters (FSDP2:
        gathered, so every rank must call it)."""
        return flatten(trained_parameters(self.model))

    def copy_to(self, model: PreTrainedModel) -> None:
        """Bring the controller's model (held-out evaluation, checkpoints) up to date: it is this one."""
        if model is not self.model:
            load_flat(trained_parameters(model), self.weights())

    def close(self) -> None:
        """Nothing to release in-process (RayTrainer's ranks are actors)."""

    def state_dict(self) -> dict:
        """FSDP2: the whole optimizer state, gathered and keyed by parameter name, so any K can resume it. With a
        critic: its weights, optimizer and schedule too; with a shared value head: its weights (its moments are in
        the policy's optimizer). Neither is part of the checkpoint's model folder."""
        state = {
            "optimizer": self._optimizer_state(self.logprobs, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.value_head is not None:  # gathered whole under FSDP2 (a collective: every rank calls state_dict)
            state["value_head"] = {k: whole(v).detach().cpu().clone() for k, v in self.value_head.state_dict().items()}
        if self.critic is not None:
            sharded = self.sharded
            weights = get_model_state_dict(self.values, options=FULL_STATE) if sharded else self.critic.state_dict()
            state["critic"] = {
                "weights": weights,
                "optimizer": self._optimizer_state(self.values, self.critic_optimizer),
                "scheduler": self.critic_scheduler.state_dict(),
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        self._load_optimizer_state(self.logprobs, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic and "critic" in state:
            critic = state["critic"]
            if self.sharded:
                set_model_state_dict(self.values, critic["weights"], options=FULL_STATE)
            else:
                self.critic.load_state_dict(critic["weights"])
            self._load_optimizer_state(self.values, self.critic_optimizer, critic["optimizer"])
            self.critic_scheduler.load_state_dict(critic["scheduler"])
        if self.value_head is not None and "value_head" in state:
            with torch.no_grad():  # each whole tensor sharded as its parameter is (FSDP2)
                for name, p in self.value_head.named_parameters():
                    w = state["value_head"][name].to(p.device)
                    p.copy_(distribute_tensor(w, p.device_mesh, p.placements) if isinstance(p, DTensor) else w)

    def _optimizer_state(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        if self.sharded:
            return get_optimizer_state_dict(module, optimizer, options=FULL_STATE)
        return optimizer.state_dict()

    def _load_optimizer_state(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if self.sharded:
            set_optimizer_state_dict(module, optimizer, state, options=FULL_STATE)
        else:
            optimizer.load_state_dict(state)

    def _token_loss(
        self, batch: dict[str, torch.Tensor], supervised: bool
    ) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """Per-token policy loss, statistics, and with GAE the per-token value loss."""
        where = batch["mask"] > 0
        logp, values = self.logprobs(  # values: the shared value head's (None without one)
            batch["input_ids"],
            batch["attention_mask"],
            where,
            1.0 if supervised else self.temperature,
            batch.get("prefix"),
        )
        if supervised:
            return -logp, {}, None
        a, mask, mu, adv = self.algo, batch["mask"], batch["mu"], batch["adv"]
        stats, value_loss, ref = {}, None, batch.get("ref")  # ref: with kl_coef > 0 (`accumulate`'s pre-pass)
        if a.advantage == "gae":
            start = time.perf_counter()
            if self.critic is not None:
                values = self.values(batch["input_ids"], batch["attention_mask"], where, batch.get("prefix"))
            rewards = batch["rewards"]
            if a.kl_in_reward:  # InstructGPT: -beta (log pi - log ref) on every token's reward, not in the loss
                rewards = rewards - a.kl_coef * (logp.detach() - ref) * mask
            adv, returns = advantages.gae(rewards, values.detach(), mask, a.gamma, a.lam)
            value_loss = losses.value_loss(values, returns)
            stats |= {"value_loss": (value_loss * mask).sum().item(), "value_seconds": time.perf_counter() - start}
        old = logp.detach() if a.behaviour_logprobs == "trainer" else mu
        per_token, ratio = _policy_loss(logp, old, adv, mask, a)
        # the engine's mu against the trainer's pi (before this step's update): over every token, and over those
        # sampled by the trainer's current version, where the gap is the engine's numerics alone
        gap = (logp.detach() - mu).abs() * mask
        current = mask * (batch["staleness"] == 0)
        stats |= {
            "ratio": (ratio * mask).sum().item(),
            "clipped": (_clipped(ratio, adv, a) * mask).sum().item(),
            "offpolicy_abs": gap.sum().item(),
            "mismatch_abs": (gap * current).sum().item(),
            "mismatch_k3": (losses.kl_k3(mu, logp.detach()) * current).sum().item(),  # KL(mu || pi), tokens ~ mu
            "current_tokens": current.sum().item(),
        }
        if a.correction != "none":
            level, threshold = a.correction_level, a.correction_threshold
            weight = losses.importance_weights(logp - mu, mask, level, a.correction, threshold)
            per_token = per_token * weight
            stats["is_weight"] = (weight * mask).sum().item()
        if a.kl_coef > 0:
            kl = losses.kl_k3(logp, ref)
            if not a.kl_in_reward:
                per_token = per_token + a.kl_coef * kl
            stats["kl"] = (kl * mask).sum().item()
        return per_token, stats, value_loss

    @torch.no_grad()
    def _reference(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference policy's log-probs of the loss tokens: a model of its own, or with LoRA this one with its
        adapters off, run as data parallelism runs it (FSDP2 gathers the root's weights in its forward)."""
        args = batch["input_ids"], batch["attention_mask"], batch["mask"] > 0, self.temperature
        if self.ref_model is not None:
            return sequence_logprobs(self.ref_model, *args, prefix=batch.get("prefix"))
        with adapters_off(self.model):
            return self.logprobs(*args, batch.get("prefix"))[0]

    def _kl_in_reward(self, seqs: list[Sequence], batches: list[dict[str, torch.Tensor]]) -> None:
        """REINFORCE++ with the KL in the reward: every token's advantage, normalised by statistics over the whole
        batch (every micro-batch, every rank), so set in a pass before any micro-batch trains."""
        if any(s.rewards is None for s in seqs):  # message-wise rollouts (spoc) carry per-message advantages instead
            raise ValueError("algorithm.kl_in_reward: REINFORCE++ needs each sequence's reward; spoc's are per message")
        kl = [b["mu"] - b["ref"] for b in batches]  # the sampler's log-probs against the reference's
        rewards, masks = [b["rewards"] for b in batches], [b["mask"] for b in batches]
        adv = advantages.reinforce_pp_kl(rewards, kl, masks, self.algo.kl_coef, total=_all_reduce)
        for b, a in zip(batches, adv, strict=True):
            b["adv"] = a

    def step(self, seqs: list[Sequence], supervised: bool = False) -> dict[str, float]:
        """One optimizer step on the whole batch (this rank's share of it), accumulated over micro-batches."""
        metrics = self.accumulate(seqs, supervised)
        grad_norm = self._clip(self.logprobs)  # the policy's weights, and a shared value head's
        critic = self.critic is not None and not supervised
        if critic:
            metrics["value_grad_norm"] = self._clip(self.critic)
        # a non-finite loss or gradient (the same on every rank: both are reduced) would poison AdamW's moments
        # and every weight: skip the update; the caller counts skips and stops a run that keeps making them
        finite = all(math.isfinite(metrics.get(k, 0.0)) for k in ("loss", "value_loss", "value_grad_norm"))
        finite = finite and math.isfinite(grad_norm)
        if finite:
            self._move_optimizer_state(self.device)
            self.optimizer.step()
            self.scheduler.step()
            if critic:
                start = time.perf_counter()
                self.critic_optimizer.step()
                self.critic_scheduler.step()
                metrics["value_seconds"] += time.perf_counter() - start
            self._move_optimizer_state(torch.device("cpu"))
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        return metrics | {"grad_norm": grad_norm, "skipped_nonfinite": float(not finite)}

    def _clip(self, module: torch.nn.Module) -> float:
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), self.optim_cfg.grad_clip)
        return float(norm.full_tensor() if self.sharded else norm)

    def _move_optimizer_state(self, device: torch.device) -> None:
        """offload (colocated on CUDA): AdamW's moments wait in host memory while the generators sample."""
        if not self.offload_optimizer:
            return
        for optimizer in [self.optimizer] + ([self.critic_optimizer] if self.critic else []):
            for state in optimizer.state.values():
                for k, v in state.items():
                    if torch.is_tensor(v) and k != "step":
                        state[k] = v.to(device, non_blocking=True)

    def accumulate(self, seqs: list[Sequence], supervised: bool = False) -> dict[str, float]:
        """Forward and backward over micro-batches: the gradients of the global batch's loss, summed over ranks."""
        self.model.train()
        world = _world()
        local_tokens = sum(sum(s.loss_mask) if s.loss_mask is not None else len(s.completion_ids) for s in seqs)
        total_tokens, total_seqs = (int(v) for v in _all_reduce([local_tokens, len(seqs)]))
        mode = "token" if supervised else self.algo.aggregation
        loss_total, sums = 0.0, {}
        # by length, so each micro-batch pads its rows to a similar width (the loss does not depend on the order);
        # sharing prompts, a prompt's samples stay together. Not under FSDP2: a layer run twice in one forward (prefix,
        # then rows) finds its parameters resharded when the second use's backward comes
        share = self.optim_cfg.share_prompts and not self.sharded and shareable(seqs)
        if share:
            ordered = sorted(seqs, key=lambda s: (len(s.prompt_ids), s.prompt_ids, len(s.completion_ids)))
        else:
            ordered = sorted(seqs, key=lambda s: len(s.prompt_ids) + len(s.completion_ids))
        groups = micro_batches(ordered, self.optim_cfg.micro_batch_tokens, share)
        shared = [share and shareable(g) for g in groups]
        # every rank runs as many forward/backward passes as the busiest one, since each pass holds collectives
        # (FSDP2 gathers parameters in forward); a rank with fewer micro-batches adds fillers of weight 0
        count = int(_all_reduce([len(groups)], dist.ReduceOp.MAX)[0]) if world > 1 else len(groups)
        filler = Sequence([self.pad_id], [self.pad_id], None if supervised else [0.0], None if supervised else [0.0])
        batches = [collate(g, self.pad_id, self.device, sh) for g, sh in zip(groups, shared, strict=True)]
        batches += [collate([filler], self.pad_id, self.device) for _ in range(count - len(groups))]
        # the reference's log-probs in a pass before training: REINFORCE++'s KL returns are normalised over them all
        if not supervised and self.algo.kl_coef > 0:
            for batch in batches:
                batch["ref"] = self._reference(batch)
        if not supervised and self.algo.kl_in_reward and self.algo.advantage != "gae":
            self._kl_in_reward(seqs, batches[: len(groups)])
        for i, batch in enumerate(batches):
            real = i < len(groups)
            last = i == count - 1  # gradients are reduced over the ranks on each rank's last backward only
            parallel = [m for m in (self.logprobs, self.values) if m is not None]
            with contextlib.ExitStack() as unsynced:
                for module in parallel:
                    if self.sharded:
                        module.set_requires_gradient_sync(last)
                    elif not (last or world == 1):
                        unsynced.enter_context(module.no_sync())
                per_token, stats, value_loss = self._token_loss(batch, supervised)
                loss = losses.aggregate(
                    per_token, batch["mask"], mode, max(total_tokens, 1), total_seqs, self.algo.aggregation_length
                )
                value = None
                if value_loss is not None:
                    value = losses.aggregate(value_loss, batch["mask"], "token", max(total_tokens, 1), total_seqs)
                joint = value is not None and self.critic is None  # a shared value head: one loss, one backward
                # DDP averages over ranks; the loss is a share of the global sum
                ((loss + self.algo.value_coef * value if joint else loss) * world * real).backward()
                if value is not None and not joint:  # the critic's graph is its own (GAE saw its values detached)
                    start = time.perf_counter()
                    (value * world * real).backward()
                    stats["value_seconds"] += time.perf_counter() - start
            loss_total += real * loss.item()
            for k, v in stats.items():  # fillers too (weight 0): every rank then reduces the same keys
                sums[k] = sums.get(k, 0.0) + real * v
        trained = sum(len(s.prompt_ids) + len(s.completion_ids) for s in seqs)
        computed = sum(computed_tokens(g, sh) for g, sh in zip(groups, shared, strict=True))
        loss_total, trained, computed, *sum_values = _all_reduce([loss_total, trained, computed, *sums.values()])
        metrics = {"loss": loss_total, "trained_tokens": trained, "computed_tokens": computed}
        sums = dict(zip(sums, sum_values, strict=True)) | {"tokens": total_tokens}
        # a mean over no tokens (no rollout sampled by the current version) is left out, not logged as 0
        metrics.update({k: sums[v] / sums[n] for k, (v, n) in TOKEN_MEANS.items() if v in sums and sums[n] > 0})
        if "value_seconds" in sums:  # the value model's time, per rank (they run side by side)
            metrics["value_seconds"] = sums["value_seconds"] / world
        return metrics
