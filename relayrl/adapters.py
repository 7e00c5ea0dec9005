"""Low-rank adapters (LoRA, by peft): train W = W0 + (alpha/r) B A with W0 frozen (docs/recipes/lora.md).

The policy is a `peft.PeftModel` around the Hugging Face model, whose linear layers peft has wrapped in place:
the trainer runs the inner model (`causal_lm`) as it runs any other, the reference policy is that model with the
adapters disabled, and a checkpoint is peft's adapter folder naming its base model. Generators keep a plain model:
they receive only the adapter and merge it into the base weights they loaded once (`merged`).

peft is imported only by runs that use adapters: it takes seconds to import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from relayrl.schema import positive, setting

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoraConfig:
    """model.lora: rank 0 trains every weight; rank r > 0 trains low-rank adapters on the `targets` layers."""

    rank: int = setting(0, ge=0, le=2**16)
    alpha: float = positive(32.0)  # the update is scaled by alpha / rank
    dropout: float = setting(0.0, ge=0, lt=1)
    # peft's target_modules: module names (q_proj, v_proj, ...) or all-linear (every linear layer but the LM head)
    targets: list[str] = setting(factory=lambda: ["all-linear"], nonempty=True)  # noqa: RUF009


def apply(model: PreTrainedModel, cfg: LoraConfig, base: str, task: str = "CAUSAL_LM") -> nn.Module:
    """`model` with fresh adapters (B = 0: the same function as `model`), its frozen weights named by `base`, the
    folder or hub id a checkpoint's adapter is loaded onto. `task` SEQ_CLS (a reward model) also trains its head."""
    import peft

    lora = peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets[0] if cfg.targets == ["all-linear"] else list(cfg.targets),
        task_type=peft.TaskType[task],
    )
    adapted = peft.get_peft_model(model, lora)
    local = Path(base).expanduser()  # a folder as an absolute path (peft does not expand ~), a hub id as it is
    adapted.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.exists() else base
    return adapted


def is_adapted(model: nn.Module) -> bool:
    return callable(getattr(model, "get_base_model", None))


def causal_lm(model: nn.Module) -> PreTrainedModel:
    """The Hugging Face model itself: inside an adapter wrapper, with its adapted layers in place."""
    return model.get_base_model() if is_adapted(model) else model


def trained_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What training changes and generators receive: the adapters, or every weight."""
    params = list(model.parameters())
    return [p for p in params if p.requires_grad] if is_adapted(model) else params


def base_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The plain model's weights, in `flatten`'s layout of a plain model: with LoRA the frozen ones."""
    params = list(causal_lm(model).parameters())
    return [p for p in params if not p.requires_grad] if is_adapted(model) else params


def base_of(model: nn.Module) -> str:
    return model.peft_config["default"].base_model_name_or_path


def adapters_off(model: nn.Module):
    """A context in which `model` computes its base's function: the reference policy, with no copy of its weights."""
    return model.disable_adapter()


def merged_model(model: nn.Module) -> PreTrainedModel:
    """A plain model to save or sample from: the adapters, if any, merged into its weights."""
    return model.merge_and_unload() if is_adapted(model) else model


def adapter_base(folder: str | Path) -> str | None:
    """The base model an adapter folder is loaded onto; None if `folder` holds a whole model."""
    path = Path(folder) / ADAPTER_CONFIG
    return json.loads(path.read_text())["base_model_name_or_path"] if path.exists() else None


def load(folder: str, base: PreTrainedModel, trainable: bool) -> nn.Module:
    """The adapter in `folder` on `base`: to train on (`trainable`), or merged into a plain model to sample from."""
    import peft

    adapted = peft.PeftModel.from_pretrained(base, folder, is_trainable=trainable)
    return adapted if trainable else merged_model(adapted)


def rebase(model: nn.Module, tokenizer, cfg: LoraConfig, folder: Path, base: str | None) -> nn.Module:
    """RL's starting point: what the adapters learnt before it (the SFT warm start) merged into the base weights,
    which are then the reference policy, and fresh adapters to train. The merged base is written to `folder` unless
    it is still `base` (None: a builtin model, which exists nowhere else; an adapter folder is not a base either)."""
    trained = any(p.any() for n, p in model.named_parameters() if "lora_B" in n)
    plain = merged_model(model)
    if trained or base is None or adapter_base(base) is not None:
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)  # a generator loads the base as it loads any model folder
        base = str(folder.resolve())
    return apply(plain, cfg, base)


@dataclass(frozen=True)
class AdapterLayout:
    """What a generator needs to sample with an adapter it receives: the base model to load once, where each
    adapted weight sits in the plain model's flat weights (`weights.flatten`), and where its A and B sit in the
    adapter's (`flatten` of `trained_parameters`)."""

    base: str  # a folder or hub id
    weights: int  # the plain model's parameter count
    adapter: int  # the adapter's
    # (offset of W, its rows, its columns, offset of A, offset of B, rank, scale)
    deltas: tuple[tuple[int, int, int, int, int, int, float], ...]


def layout(model: nn.Module) -> AdapterLayout:
    from peft.tuners.lora import Linear

    inner = causal_lm(model)
    offsets, counts = {}, {True: 0, False: 0}  # requires_grad: in the adapter's flat weights, else in the plain's
    for name, p in inner.named_parameters():  # in `flatten`'s order, tied weights once
        offsets[name.replace(".base_layer.", ".")] = counts[p.requires_grad]
        counts[p.requires_grad] += p.numel()
    deltas = []
    for name, module in inner.named_modules():
        if not hasattr(module, "lora_A"):
            continue
        if not isinstance(module, Linear):
            raise ValueError(f"model.lora.targets: {name} is a {type(module).__name__}; only linear layers are synced")
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        w, a_at, b_at = (offsets[f"{name}.{k}weight"] for k in ("", "lora_A.default.", "lora_B.default."))
        deltas.append((w, b.shape[0], a.shape[1], a_at, b_at, a.shape[0], float(module.scaling["default"])))
    return AdapterLayout(base_of(model), counts[False], counts[True], tuple(deltas))


def merged(
    base: torch.Tensor, adapter: torch.Tensor, layout: AdapterLayout, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The plain model's flat weights with each adapted weight W0 + scale B A: what a generator samples with.
    `out`: a buffer already holding `base` (a generator's, merged into at each version): only the adapted weights
    are rewritten, each in one pass that reads W0 from `base`, so nothing is copied whole."""
    if base.numel() != layout.weights:
        raise ValueError(f"weight sync: a base of {base.numel()} values for a layout of {layout.weights}")
    full = base.clone() if out is None else out
    for w, rows, cols, a, b, rank, scale in layout.deltas:
        weight = slice(w, w + rows * cols)
        b_, a_ = adapter[b : b + rows * rank].view(rows, rank), adapter[a : a + rank * cols].view(rank, cols)
        torch.addmm(base[weight].view(rows, cols), b_, a_, alpha=scale, out=full[weight].view(rows, cols))
    return full
