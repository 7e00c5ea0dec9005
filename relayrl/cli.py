"""relayrl train | eval | tts | rm train | serve | plan | models import."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from relayrl.config import ConfigError, load_config, split_args, task_preset, task_presets
from relayrl.errors import TrainingError
from relayrl.model_import import KNOWN_MODELS, ModelImportError, default_dir, import_gguf, import_known


def _train(args) -> None:
    from relayrl.controller import train

    names, configs, overrides = split_args(args.args)
    if names:
        raise ConfigError(f"train: {names[0]!r} is neither a YAML file (.yaml) nor a dotted override (key=value)")
    if args.resume:
        if configs or overrides:
            raise ConfigError("--resume: a resumed run keeps its own config.yaml; drop the config and overrides")
        train(resume=Path(args.resume))
    else:
        train(load_config(configs, overrides))


def _eval(args) -> None:
    from relayrl import build
    from relayrl.evaluation import compare
    from relayrl.evaluation.evaluate import evaluate
    from relayrl.generation.engines import sampler_for
    from relayrl.models import load_model_and_tokenizer

    models, configs, overrides = split_args(args.args)
    if not models:
        raise ConfigError("eval: name at least one model, checkpoint folder or hub id")
    cfg = load_config([*([task_preset(args.task)] if args.task else []), *configs], overrides, training=False)
    task = build.task(cfg)
    scorer, message_scorer = build.heldout_scorers(
        task, build.message_rewards(cfg, task)
    )  # spoc: the answer it ends on
    ks = tuple(int(k) for k in args.k.split(",")) if args.samples else ()
    rows, results = [], []
    for name in models:
        model, tokenizer = load_model_and_tokenizer(name)
        with sampler_for(cfg.generation, model, tokenizer) as sampler:
            results.append(
                evaluate(
                    sampler,
                    tokenizer,
                    task.heldout(),
                    scorer,
                    build.sampling(cfg, task.stop_strings),
                    n_samples=args.samples,
                    ks=ks,
                    seed=cfg.seed,
                    extract=task.extract,
                    message_scorer=message_scorer,
                    environment=build.environment(cfg),
                )
            )
        rows.append(compare.summary(name, task.name, results[-1], results[0] if len(results) > 1 else None))
    print(compare.table(rows))
    for row, result in zip(rows, results, strict=True):
        if result.message_metrics:
            print(
                row["label"],
                " ".join(f"{k}={'-' if v is None else f'{v:.3f}'}" for k, v in result.message_metrics.items()),
            )
    if args.output:
        compare.write(Path(args.output), rows, results)
        print(f"per-item outputs, eval.json, compare.md and compare.png in {args.output}")


def _tts(args) -> None:
    from relayrl.generation.engines import sampler_for
    from relayrl.models import TinySize, load_model_and_tokenizer
    from relayrl.tts.evaluate import evaluate_tts, table, write

    models, configs, overrides = split_args(args.args)
    if len(models) > 1:
        raise ConfigError(f"tts: one policy model at a time; got {', '.join(models)}")
    cfg = load_config([*([task_preset(args.task)] if args.task else []), *configs], overrides, training=False)
    name, m = (models or [cfg.model.name_or_path])[0], cfg.model
    model, tokenizer = load_model_and_tokenizer(name, TinySize(m.hidden, m.layers, m.heads), cfg.seed)
    with sampler_for(cfg.generation, model, tokenizer) as sampler:
        report = evaluate_tts(cfg, name, model, tokenizer, sampler=sampler)
    print(table(report))
    write(Path(args.output), report)
    print(f"results in {args.output}")


def _rm_train(args) -> None:
    from relayrl.config import merge
    from relayrl.training.critic_rm import train_critic_rm
    from relayrl.training.reward_model import RMConfig, train_reward_model

    names, configs, overrides = split_args(args.args)
    if names:
        raise ConfigError(f"rm train: {names[0]!r} is neither a YAML file (.yaml) nor a dotted override (key=value)")
    cfg = merge(RMConfig, configs, overrides)
    metrics = (train_critic_rm if cfg.kind == "critic" else train_reward_model)(cfg)
    if cfg.kind == "critic":
        s = metrics["stage1"]
        print(
            f"stage 1: kept {s['kept']} of {s['pairs']} pairs ({s['dropped']} dropped); of the"
            f" {s['critiques'] + s['unparsed']} critiques {s['unparsed']} had no score, {s['contradicting']}"
            " contradicted the label"
        )
    print(
        f"held-out pair accuracy {metrics['heldout_pair_accuracy_start']:.1%} -> {metrics['heldout_pair_accuracy']:.1%}"
        f" ({metrics['heldout_pairs']} pairs); reward model: {cfg.output}"
    )


def _serve(args) -> None:
    from relayrl.generation.engines import GenerationConfig
    from relayrl.serving.app import ServeConfig
    from relayrl.serving.server import serve

    cfg = ServeConfig(
        args.max_new_tokens, args.timeout, args.max_body_bytes, args.api_key, args.tts_n, args.reward_model
    )
    generation = GenerationConfig(backend=args.backend, vllm_kv_cache_gb=args.kv_cache_gb)
    serve(args.model, args.host, args.port, cfg, args.max_batch, args.max_kv_tokens, args.threads, generation)


def _plan(args) -> None:
    from relayrl.plan.report import plan_command

    plan_command(args.model, args.device, args.devices, args.set, args.max_staleness, args.plot, args.json)


def _models_import(args) -> None:
    output = Path(args.output) if args.output else None
    if args.gguf:
        gguf = Path(args.gguf)
        folder = import_gguf(gguf, output or default_dir(args.name or gguf.stem))
    else:
        folder = import_known(args.model, output)
    print(folder)


def _models_merge(args) -> None:
    from relayrl.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.checkpoint)  # an adapter folder comes merged into its base
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(args.output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relayrl")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="RL-train a policy (no arguments: the embedded default)")
    t.add_argument("args", nargs="*", help="YAML config files (applied in order), then dotted overrides: steps=50")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="score models or checkpoints on a task's held-out set, side by side")
    e.add_argument("args", nargs="+", help="models (checkpoint folders, HF folders, hub ids), a YAML config, overrides")
    e.add_argument("--task", help=f"a task preset ({', '.join(task_presets())}) or a YAML file with a task section")
    e.add_argument("--samples", type=int, default=0, help="samples per item for pass@k and maj@k (0: greedy only)")
    e.add_argument("--k", default="1", help="comma-separated k for pass@k and maj@k")
    e.add_argument("--output", metavar="DIR", help="write per-item JSONL, eval.json, compare.md and compare.png here")
    e.set_defaults(func=_eval)
    ts = sub.add_parser(
        "tts",
        help="test-time scaling methods on a task's held-out set: accuracy and tokens spent (with environment.name:"
        " over multi-turn episodes, docs/recipes/agentic_tts.md)",
    )
    ts.add_argument("args", nargs="*", help="a policy model (default: model.name_or_path), YAML configs, overrides")
    ts.add_argument("--task", help=f"a task preset ({', '.join(task_presets())}) or a YAML file with a task section")
    ts.add_argument("--output", default="tts.json", help="the JSON report (default: tts.json)")
    ts.set_defaults(func=_tts)
    r = sub.add_parser("rm", help="reward models").add_subparsers(dest="action", required=True)
    rt = r.add_parser(
        "train",
        help="train a Bradley-Terry reward model, or a Critic-RM (kind=critic), on preference pairs"
        " (docs/recipes/reward_models.md, docs/recipes/critic_rm.md)",
    )
    rt.add_argument("args", nargs="*", help="YAML config files, then dotted overrides: data.path=pairs.jsonl")
    rt.set_defaults(func=_rm_train)
    s = sub.add_parser("serve", help="serve a model as an OpenAI-compatible server (docs/serving.md)")
    s.add_argument("model", help="a checkpoint folder, HF folder, hub id or builtin")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-new-tokens", type=int, default=256, help="when a request gives no max_tokens")
    s.add_argument("--max-batch", type=int, default=32, help="rows (requests x n) generated at once")
    s.add_argument("--max-kv-tokens", type=int, default=65536, help="KV-cache tokens the batch may hold")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take, waiting included")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20)
    key_help = "clients must send it as a Bearer token (default: $RELAYRL_API_KEY; none: no key needed)"
    s.add_argument("--api-key", default=os.environ.get("RELAYRL_API_KEY"), help=key_help)
    s.add_argument("--tts-n", type=int, default=8, help="N of the majority@N / best_of_n@N names /v1/models lists")
    s.add_argument("--reward-model", help="a reward model folder (relayrl rm train): serves best_of_n@N")
    s.add_argument("--threads", type=int, default=0, help="torch threads for the model (0: every core)")
    s.add_argument(
        "--backend", choices=["native", "vllm"], default="native", help="what batches and samples (docs/serving.md)"
    )
    s.add_argument("--kv-cache-gb", type=int, default=2, help="--backend vllm on a CPU: its KV cache's GiB")
    s.set_defaults(func=_serve)
    pl = sub.add_parser(
        "plan", help="predict step time and tokens/s of each placement, split and staleness (docs/planning.md)"
    )
    pl.add_argument("model", help="a size (8B, 135M), a builtin (tiny-llama), a local HF folder or a hub id")
    pl.add_argument("set", nargs="*", metavar="section.field=value", help="workload.*, device.*, precision.* changes")
    pl.add_argument("--device", default="H100", help="H100, H200, A100, L4, or cpu (this machine, measured)")
    pl.add_argument("--devices", type=int, help="devices to place (default: 8 GPUs, or this machine's cores)")
    pl.add_argument("--max-staleness", type=int, default=4, help="the largest async staleness bound tried")
    pl.add_argument("--plot", metavar="PNG", help="also plot step time against the generator's share of devices")
    pl.add_argument("--json", metavar="FILE", help="also write every alternative as JSON")
    pl.set_defaults(func=_plan)
    m = sub.add_parser("models", help="manage local models").add_subparsers(dest="action", required=True)
    i = m.add_parser("import", help="convert a GGUF into an HF model folder (cached); prints the folder")
    source = i.add_mutually_exclusive_group(required=True)
    source.add_argument("model", nargs="?", help=f"a known model: {', '.join(sorted(KNOWN_MODELS))}")
    source.add_argument("--gguf", metavar="FILE", help="a GGUF file to convert")
    i.add_argument("--name", help="cache name for --gguf (default: the file name without .gguf)")
    i.add_argument("--output", metavar="DIR", help="write the model folder here instead of the cache")
    i.set_defaults(func=_models_import)
    mg = m.add_parser("merge", help="write a LoRA checkpoint merged into its base as a plain HF model folder")
    mg.add_argument("checkpoint", help="a checkpoint folder of a run with model.lora (or its checkpoints/latest)")
    mg.add_argument("output", help="the folder to write")
    mg.set_defaults(func=_models_merge)
    args = parser.parse_args(argv)
    if getattr(args, "name", None) and not args.gguf:
        i.error("--name names a --gguf import; a known model keeps its own name")
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ModelImportError, ValueError, TrainingError) as err:
        sys.exit(f"relayrl: error: {err}")
    except KeyboardInterrupt:  # the RL loop checkpoints on Ctrl-C; before it (start-up, SFT) nothing is kept
        sys.exit("relayrl: interrupted")


if __name__ == "__main__":
    main()
