import contextlib
import socket
import threading
import time

import pytest

import relayrl  # noqa: F401  first: it hides torch extensions built for another torch (relayrl/compat.py)


def tiny_overrides(run_dir, **extra) -> list[str]:
    """A training job small enough for the test suite: seconds, not minutes."""
    base = {
        "model.hidden": 32,
        "model.layers": 2,
        "model.heads": 2,
        "sft.steps": 10,
        "sft.batch_size": 16,
        "steps": 6,
        "rollout.prompts_per_step": 4,
        "rollout.samples_per_prompt": 4,
        "rollout.max_new_tokens": 16,
        "eval_every": 3,
        "checkpoint_every": 2,
        "task.arithmetic.heldout_size": 16,
        "task.arithmetic.terms": 2,
        "threads.generator": 1,
        "threads.trainer": 1,
        "run_dir": str(run_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def tiny():
    return tiny_overrides


@contextlib.contextmanager
def _live_server(chat, cfg=None, backend=None, **engine):
    """`relayrl serve`'s app for `chat` (a ChatModel) on a free port of 127.0.0.1, run by uvicorn in a thread of
    this process; yields its base URL (ending in /v1). `backend`: one already built (closed after), else the native
    Engine with `engine`'s max_batch, max_kv_tokens."""
    import uvicorn

    from relayrl.serving.app import ServeConfig, make_app
    from relayrl.serving.engine import Engine

    backend = backend or Engine(chat.model, chat.tokenizer, **engine)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(chat, backend, cfg or ServeConfig()), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join()
        backend.close()
        sock.close()


@pytest.fixture(scope="session")
def live_server():
    return _live_server


@pytest.fixture(scope="session")
def verdict_judge(tmp_path_factory) -> str:
    """A tiny model folder trained to answer every judge prompt 'Score: 7' and 'Winner: B': a judge whose every
    reply parses, and that always prefers whichever response it is shown second (a pure position bias)."""
    import random

    from relayrl.generation.sampler import encode_prompt
    from relayrl.models import TinySize, load_model_and_tokenizer
    from relayrl.rewards.judge import PAIRWISE, POINTWISE
    from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer

    model, tokenizer = load_model_and_tokenizer("tiny-llama", TinySize(64, 2, 2))
    reply = tokenizer("Score: 7\nWinner: B", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    rng = random.Random(0)

    def prompt() -> list[int]:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        question, first, second = f"Q:{a}+{b}\nA:", f"#{rng.randint(0, 199)}", f"{a}+{b}={a + b}\n#{a + b}"
        if rng.random() < 0.5:
            first, second = second, first
        if rng.random() < 0.5:
            return encode_prompt(tokenizer, PAIRWISE.format(question=question, a=first, b=second))
        text = POINTWISE.format(question=question, answer=a + b, response=first, low=0.0, high=10.0)
        return encode_prompt(tokenizer, text)

    trainer = Trainer(model, OptimConfig(lr=3e-3, warmup_steps=0), AlgorithmConfig(), tokenizer.pad_token_id)
    for _ in range(150):
        trainer.step([Sequence(prompt(), reply) for _ in range(8)], supervised=True)
    folder = tmp_path_factory.mktemp("verdict_judge")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
