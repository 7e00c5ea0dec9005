"""relayrl train | eval | models import."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from relayrl.config import ConfigError, load_config
from relayrl.model_import import KNOWN_MODELS, ModelImportError, default_dir, import_gguf, import_known


def _train(args) -> None:
    from relayrl.controller import train

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume: a resumed run keeps its own config.yaml; drop the config and overrides")
        train(resume=Path(args.resume))
    else:
        train(load_config(args.config, args.overrides))


def _eval(args) -> None:
    from relayrl.evaluation.evaluate import evaluate
    from relayrl.models import load_model_and_tokenizer

    cfg = load_config(args.config, args.overrides)
    task = cfg.task.build()
    model, tokenizer = load_model_and_tokenizer(args.model)
    ks = tuple(int(k) for k in args.k.split(",")) if args.samples else ()
    result = evaluate(
        model,
        tokenizer,
        task.heldout(),
        task.scorer,
        cfg.sampling(task.stop_strings),
        n_samples=args.samples,
        ks=ks,
        seed=cfg.seed,
    )
    out = {
        "model": args.model,
        "task": task.name,
        "n": len(result.outputs),
        "greedy_pass@1": result.accuracy,
        "greedy_interval": result.interval,
    } | {f"pass@{k}": v for k, v in result.pass_at.items()}
    print(json.dumps(out, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            f.writelines(json.dumps(o) + "\n" for o in result.outputs)


def _models_import(args) -> None:
    output = Path(args.output) if args.output else None
    if args.gguf:
        gguf = Path(args.gguf)
        folder = import_gguf(gguf, output or default_dir(args.name or gguf.stem))
    else:
        folder = import_known(args.model, output)
    print(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relayrl")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="RL-train a policy (no arguments: the embedded default)")
    t.add_argument("config", nargs="?", help="a YAML config file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=50 algorithm.loss=ppo")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="score a model or checkpoint on a task's held-out set")
    e.add_argument("model", help="checkpoint folder, HF model folder or hub id")
    e.add_argument("config", nargs="?", help="a YAML config file naming the task")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--samples", type=int, default=0, help="samples per item for pass@k (0: greedy only)")
    e.add_argument("--k", default="1", help="comma-separated k for pass@k")
    e.add_argument("--output", help="write per-item outputs here as JSONL")
    e.set_defaults(func=_eval)
    m = sub.add_parser("models", help="manage local models").add_subparsers(dest="action", required=True)
    i = m.add_parser("import", help="convert a GGUF into an HF model folder (cached); prints the folder")
    source = i.add_mutually_exclusive_group(required=True)
    source.add_argument("model", nargs="?", help=f"a known model: {', '.join(sorted(KNOWN_MODELS))}")
    source.add_argument("--gguf", metavar="FILE", help="a GGUF file to convert")
    i.add_argument("--name", help="cache name for --gguf (default: the file name without .gguf)")
    i.add_argument("--output", metavar="DIR", help="write the model folder here instead of the cache")
    i.set_defaults(func=_models_import)
    args = parser.parse_args(argv)
    if getattr(args, "name", None) and not args.gguf:
        i.error("--name names a --gguf import; a known model keeps its own name")
    if getattr(args, "config", None) and "=" in args.config:  # only overrides were given
        args.overrides, args.config = [args.config, *args.overrides], None
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ModelImportError) as err:
        sys.exit(f"relayrl: error: {err}")


if __name__ == "__main__":
    main()
