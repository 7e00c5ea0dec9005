"""relayrl train | eval."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from relayrl.config import ConfigError, load_config


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
    args = parser.parse_args(argv)
    if args.config and "=" in args.config:  # only overrides were given
        args.overrides, args.config = [args.config, *args.overrides], None
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f"relayrl: error: {err}")


if __name__ == "__main__":
    main()
