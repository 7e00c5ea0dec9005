"""relayrl serve, tried with the official `openai` client against a live server: chat, completions, streaming, n,
stop strings, seeds, log-probabilities, test-time scaling names; every bad input a 4xx in OpenAI's error JSON
(and the server serving on); failures, timeouts and disconnects; batching across concurrent requests."""

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
import torch

from relayrl.evaluation.metrics import majority_vote
from relayrl.generation.chat import ChatModel
from relayrl.generation.sampler import SamplingConfig
from relayrl.models import TinySize, build_char_tokenizer, build_tiny_model
from relayrl.rewards.math_answer import extract_answer
from relayrl.rewards.model_scorer import RewardModelScorer
from relayrl.serving.app import ServeConfig
from relayrl.serving.backend import Job
from relayrl.serving.engine import Engine

KEY = "test-key"
USER = [{"role": "user", "content": "Q:12+30"}]
# one line per message, then the assistant's turn; tool messages make it raise, as some models' templates do
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool messages') }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_model_folder(path: Path) -> str:
    """tiny-llama (untrained, 256 positions, head size 32) with a chat template, saved in `path`."""
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = TEMPLATE
    build_tiny_model("tiny-llama", tokenizer, TinySize(), 0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return chat_model_folder(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    """An untrained one-output classifier: arbitrary but fixed scores, enough to check best-of-N picks its best."""
    from relayrl.training.reward_model import RMModelConfig, load_reward_model

    model, tokenizer = load_reward_model(RMModelConfig(hidden=32))
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def chat(folder) -> ChatModel:
    return ChatModel(folder)


@pytest.fixture(scope="module")
def server(live_server, chat, reward_model):
    cfg = ServeConfig(max_new_tokens=32, api_key=KEY, tts_n=4, reward_model=reward_model)
    with live_server(chat, cfg) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def slowed(folder) -> ChatModel:
    """The same model, every forward pass 10 ms slower: steps long enough that timing shows who waits for whom,
    whatever else runs on the machine."""
    chat = ChatModel(folder)
    chat.model.register_forward_pre_hook(lambda module, args: time.sleep(0.01))
    return chat


@pytest.fixture(scope="module")
def slow_server(live_server, slowed):
    with live_server(slowed) as url:
        yield url


def _health(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as response:
        return json.loads(response.read())


def _until_idle(url: str, within: float) -> float:
    """Seconds until the server has no row generating, failing after `within`."""
    start = time.monotonic()
    while _health(url)["rows"]:
        assert time.monotonic() - start < within, _health(url)
        time.sleep(0.01)
    return time.monotonic() - start


def test_chat_completion_is_the_in_process_chat_models_reply(client, chat):
    reply = client.chat.completions.create(
        model="anything", messages=USER, max_tokens=20, temperature=0.7, top_p=0.9, seed=5
    )
    # the engine draws with `next_tokens` from the request's own generator: a lone request is `sample`'s reply
    expected = chat.reply(USER, SamplingConfig(20, 0.7, 0.9), 5)
    (choice,) = reply.choices
    assert reply.object == "chat.completion" and reply.model == chat.name  # any plain name: the served model
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == len(expected.completion_ids)
    assert reply.usage.total_tokens == expected.total_tokens
    assert [m.id for m in client.models.list().data] == [chat.name, "majority@4", "best_of_n@4"]


def test_completions_take_texts_and_token_ids_with_n_per_prompt(client, chat):
    reply = client.completions.create(model="m", prompt=["Q:1+2\nA:", "Q:3+4\nA:"], max_tokens=6, n=2, seed=1)
    assert reply.object == "text_completion" and [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices)
    ids = chat.tokenizer("Q:1+2\nA:")["input_ids"]
    greedy = [
        client.completions.create(model="m", prompt=prompt, max_tokens=6, temperature=0).choices[0].text
        for prompt in ("Q:1+2\nA:", ids)
    ]
    assert greedy[0] == greedy[1]  # the text and its token ids are the same prompt
    assert reply.usage.prompt_tokens == 2 * len(ids)  # each prompt counted once, whatever n


def test_n_samples_differ_and_a_seed_repeats_them(client):
    def texts(seed: int) -> list[str]:
        reply = client.chat.completions.create(model="m", messages=USER, max_tokens=16, n=3, seed=seed)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        return [c.message.content for c in reply.choices]

    first = texts(7)
    assert len(set(first)) == 3  # 16 draws from ~80 characters each: equal samples would be a seeding bug
    assert texts(7) == first and texts(8) != first


def test_stop_strings_cut_the_text_before_them_streamed_or_not(client):
    full = client.chat.completions.create(model="m", messages=USER, max_tokens=40, temperature=0)
    text = full.choices[0].message.content
    assert full.choices[0].finish_reason == "length" and len(text) > 12
    stop = text[8:10]
    expected = text[: text.index(stop)]
    for stops in (stop, [stop, "never said"]):
        cut = client.chat.completions.create(model="m", messages=USER, max_tokens=40, temperature=0, stop=stops)
        assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(
            model="m", messages=USER, max_tokens=40, temperature=0, stop=stops, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_streams_give_the_same_choices_usage_and_done(client, server):
    args = {"model": "m", "messages": USER, "max_tokens": 12, "n": 2, "seed": 3}
    whole = client.chat.completions.create(**args)
    texts, reasons, roles, usage = ["", ""], [None, None], set(), None
    for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk"
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            reasons[c.index] = c.finish_reason or reasons[c.index]
            roles |= {c.index} if c.delta.role == "assistant" else set()
    assert texts == [c.message.content for c in whole.choices] and roles == {0, 1}
    assert reasons == [c.finish_reason for c in whole.choices] and usage == whole.usage
    completion = client.completions.create(model="m", prompt="Q:2+2\nA:", max_tokens=8, seed=2)
    stream = client.completions.create(model="m", prompt="Q:2+2\nA:", max_tokens=8, seed=2, stream=True)
    assert "".join(c.choices[0].text for c in stream) == completion.choices[0].text
    raw = urllib.request.Request(
        server + "/completions",
        json.dumps({"model": "m", "prompt": "Q:", "max_tokens": 2, "stream": True}).encode(),
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(raw, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.read().decode().endswith("data: [DONE]\n\n")


def test_logprobs_are_the_models_and_name_the_likeliest_tokens(client, chat):
    reply = client.chat.completions.create(
        model="m", messages=USER, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for e in entries:  # greedy: the sampled token is the likeliest
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == e.logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
    prompt, greedy = chat.prompt_ids(USER), chat.reply(USER, SamplingConfig(10, 0.0))
    assert reply.choices[0].message.content == greedy.text
    ids = torch.tensor([prompt + greedy.completion_ids])
    with torch.no_grad():
        full = chat.model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    expected = full.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
    # the cached decode sums in another order than one full forward pass: a log-prob of size <= log 83 = 4.4
    # moved by ~n * 2^-24 * 4.4 with n ~ 4 layers x (512 + 128 + 30) dot-product terms: ~1e-3 at worst
    torch.testing.assert_close(torch.tensor([e.logprob for e in entries]), expected, rtol=0, atol=1e-3)
    completion = client.completions.create(model="m", prompt="Q:", max_tokens=5, logprobs=2, temperature=0)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5 and lp.text_offset[0] == 0
    assert all(
        len(top) == 2 and max(top.values()) == p for top, p in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )


def test_test_time_scaling_names_pick_among_the_same_samples_and_count_them(client, reward_model, chat):
    args = {"messages": USER, "max_tokens": 16, "seed": 11}
    candidates = client.chat.completions.create(model="m", n=5, **args)
    texts = [c.message.content for c in candidates.choices]
    voted = client.chat.completions.create(model="majority@5", **args)
    winner = majority_vote([extract_answer(t) for t in texts])
    assert voted.model == "majority@5" and voted.choices[0].message.content == texts[winner or 0]
    assert voted.usage.completion_tokens == candidates.usage.completion_tokens  # every sample is paid for
    assert voted.usage.test_time_scaling == {"method": "majority", "candidates": 5, "reward_model_tokens": 0}
    best = client.chat.completions.create(model="best_of_n@5", **args)
    scorer, question = RewardModelScorer(reward_model), chat.tokenizer.decode(chat.prompt_ids(USER))
    scores = [scorer(t, "", question) for t in texts]
    assert best.choices[0].message.content == texts[scores.index(max(scores))]
    read = sum(scorer.tokens(t, question) for t in texts)
    assert best.usage.test_time_scaling["reward_model_tokens"] == read > 0
    assert best.usage.prompt_tokens == candidates.usage.prompt_tokens + read
    stream = client.chat.completions.create(model="majority@5", stream=True, **args)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == texts[winner or 0]


LONG = "x" * (2 << 20)
BAD = [  # (body, status, param): the table in docs/serving.md
    (b"[1,2,3]", 400, None),
    (b"{not json", 400, None),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 1_000_000_000}, 400, "max_tokens"),  # beyond the context (256)
    ({"max_completion_tokens": 300}, 400, "max_completion_tokens"),
    ({"temperature": -1}, 400, "temperature"),
    ({"temperature": 2.5}, 400, "temperature"),
    ({"top_p": 1.5}, 400, "top_p"),
    ({"n": 0}, 400, "n"),
    ({"n": 33}, 400, "n"),  # over the batch (32)
    ({"seed": 2**64}, 400, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": ""}, 400, "stop"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, 400, "messages"),  # the chat template raises
    ({"messages": [{"role": "user", "content": "1+" * 200}]}, 400, "messages"),  # fills the context
    ({"logit_bias": {"5": 1}}, 400, "logit_bias"),  # not supported: said, not ignored
    ({"top_logprobs": 2}, 400, None),  # without logprobs
    ({"model": "majority@1"}, 400, "model"),
    ({"model": "beam@4"}, 404, "model"),
    ({"messages": [{"role": "user", "content": LONG}]}, 413, None),
]


@pytest.mark.parametrize(("change", "status", "param"), BAD, ids=[str(b[0])[:40] for b in BAD])
def test_bad_requests_get_openais_error_json_and_the_server_goes_on(client, server, change, status, param):
    body = change if isinstance(change, bytes) else json.dumps({"model": "m", "messages": USER} | change).encode()
    request = urllib.request.Request(
        server + "/chat/completions", body, {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    error = json.loads(err.value.read())["error"]
    assert err.value.code == status and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]
    assert client.chat.completions.create(model="m", messages=USER, max_tokens=2).choices[0].message is not None


def test_bad_prompts_bodies_of_other_types_routes_and_methods_are_json_errors_too(client, server):
    for prompt in ("", [], [[]], [10**6]):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="m", prompt=prompt, max_tokens=2)
        assert err.value.body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError):
        client.get("/nowhere", cast_to=object)
    request = urllib.request.Request(server + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)  # GET
    assert err.value.code == 405 and "error" in json.loads(err.value.read())
    body = json.dumps({"model": "m", "messages": USER}).encode()  # as `curl -d` sends it: form-urlencoded
    request = urllib.request.Request(server + "/chat/completions", body, {"Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert (
        err.value.code == 400 and "Content-Type: application/json" in json.loads(err.value.read())["error"]["message"]
    )


def test_a_failed_generation_is_a_500_and_the_server_goes_on(client, chat):
    fail_at = {"call": 1, "calls": 0}

    def fault(module, args):
        fail_at["calls"] += 1
        if fail_at["calls"] == fail_at["call"]:
            raise RuntimeError("injected fault")

    assert len(chat.reply(USER, SamplingConfig(8, 0.0)).completion_ids) == 8  # greedy: no EOS before 8 tokens
    hook = chat.model.register_forward_pre_hook(fault)
    try:
        with pytest.raises(openai.InternalServerError, match="injected fault") as err:  # the prefill fails
            client.chat.completions.create(model="m", messages=USER, max_tokens=8, temperature=0)
        assert err.value.body["type"] == "server_error"
        fail_at.update(call=3, calls=0)
        stream = client.chat.completions.create(model="m", messages=USER, max_tokens=8, temperature=0, stream=True)
        with pytest.raises(openai.APIError, match="injected fault"):  # after two tokens: the error is an event
            list(stream)
    finally:
        hook.remove()
    assert client.chat.completions.create(model="m", messages=USER, max_tokens=4).usage.completion_tokens > 0


def test_the_api_key_is_required_everywhere_but_health(server):
    wrong = openai.OpenAI(base_url=server, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model="m", messages=USER, max_tokens=2)
    assert err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    for route, body in (("/models", None), ("/chat/completions", b"{}"), ("/completions", b"{}")):  # no key
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(server + route, body), timeout=30)
        assert err.value.code == 401 and json.loads(err.value.read())["error"]["code"] == "invalid_api_key"
    assert _health(server)["status"] == "ok"


def test_rows_that_join_and_leave_a_batch_get_what_they_get_alone(slowed):
    """The engine's KV-cache surgery: prompts of 3 to 50 tokens joining a batch mid-generation (left-padded to
    it), rows leaving it (the padding columns no row needs cut away), greedy and seeded sampling, n up to 3."""
    engine = Engine(slowed.model, slowed.tokenizer)
    jobs = [  # prompt length, n, max_tokens, temperature, seed
        (5, 1, 20, 0.0, 0),
        (30, 2, 8, 1.0, 1),
        (3, 1, 14, 0.7, 2),
        (50, 3, 16, 0.0, 3),
        (10, 1, 6, 1.0, 4),
    ]

    def submit(length: int, n: int, max_tokens: int, temperature: float, seed: int):
        """The job's rows' (token, log-prob) lists, filled in as it runs, and an event set when it is over."""
        done, rows, finished = threading.Event(), {}, []

        def emit(update) -> None:
            rows.setdefault(update.index, []).extend((t.token, t.logprob) for t in update.logprobs)
            finished.extend([update.index] if update.finish_reason else [])
            if len(finished) == n:
                done.set()

        prompt = list(range(4, 4 + length))
        engine.submit(Job([prompt], n, max_tokens, temperature, 1.0, (), seed, 0, False, emit))
        return rows, done

    try:
        alone = []
        for job in jobs:
            alone.append(submit(*job))
            assert alone[-1][1].wait(30)
        together = []
        for job in jobs:  # each joins 2-3 steps (of >= 10 ms) after the one before
            together.append(submit(*job))
            time.sleep(0.025)
        assert all(done.wait(30) for _, done in together)
    finally:
        engine.close()
    for (a, _), (b, _) in zip(alone, together, strict=True):
        assert a.keys() == b.keys()
        for i in a:
            assert [t for t, _ in a[i]] == [t for t, _ in b[i]]
            # padded and batched, the matmuls sum in another order: log-probs (of size <= 4.4) move by ~1e-6
            assert [p for _, p in a[i]] == pytest.approx([p for _, p in b[i]], abs=1e-4)


def test_a_short_request_is_not_held_up_by_a_long_one(slow_server):
    client = openai.OpenAI(base_url=slow_server, api_key="none", max_retries=0, timeout=60)
    done: dict[str, float] = {}
    replies = {}

    def ask(name: str, max_tokens: int) -> None:
        replies[name] = client.chat.completions.create(model="m", messages=USER, max_tokens=max_tokens, temperature=0)
        done[name] = time.monotonic()

    long = threading.Thread(target=ask, args=("long", 60))
    long.start()
    while not _health(slow_server)["rows"]:  # the long one is generating
        time.sleep(0.005)
    ask("short", 3)
    long.join()
    assert replies["long"].usage.completion_tokens == 60 and replies["short"].usage.completion_tokens == 3
    # 60 steps of >= 10 ms against 3: the short one ends ~0.5 s before the long one when it shares its steps
    assert done["short"] < done["long"]


def test_concurrent_requests_share_decode_steps(slow_server):
    client = openai.OpenAI(base_url=slow_server, api_key="none", max_retries=0, timeout=60)

    def ask() -> int:
        return client.chat.completions.create(
            model="m", messages=USER, max_tokens=20, temperature=0
        ).usage.completion_tokens

    start = time.monotonic()
    assert ask() == 20
    alone = time.monotonic() - start
    threads = [threading.Thread(target=ask) for _ in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = time.monotonic() - start
    # one request: 20 forward passes of >= 10 ms. Eight one after another would take 8x that; batched they share
    # the decode steps and add at most one prefill pass each (28 passes), so well under 3x
    assert together < 3 * alone, (alone, together)


def test_a_request_past_its_timeout_is_a_504_and_frees_its_rows(live_server, slowed):
    with live_server(slowed, ServeConfig(timeout=0.5)) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as err:  # 200 steps of >= 10 ms against a 0.5 s timeout
            client.chat.completions.create(model="m", messages=USER, max_tokens=200, temperature=0)
        assert err.value.status_code == 504 and err.value.body["code"] == "timeout"
        _until_idle(url, within=1.0)  # cancelled at the next step, not 1.5 s later at the 200th


def test_a_client_that_leaves_a_stream_frees_its_rows(slow_server):
    client = openai.OpenAI(base_url=slow_server, api_key="none", max_retries=0, timeout=60)
    stream = client.chat.completions.create(model="m", messages=USER, max_tokens=200, temperature=0, stream=True)
    chunks = iter(stream)
    for _ in range(4):
        next(chunks)
    stream.close()
    # the rest would take ~195 steps of >= 10 ms (2 s); the rows go at the step after the disconnect is noticed
    _until_idle(slow_server, within=1.0)


def test_the_docs_examples_run_against_relayrl_serve(monkeypatch):
    """docs/serving.md's curl commands and Python, run as written against `relayrl serve tiny-llama` (its port
    and a key substituted): no example above its Errors section errs, and the one below it gives its 400."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RELAYRL_API_KEY", "doc-key")
    # one thread: a tiny model gains nothing from a second, and on a busy machine a thread pool's barrier can make
    # each of its forward passes 100x slower
    command = [sys.executable, "-m", "relayrl.cli", "serve", "tiny-llama", "--port", str(port), "--threads", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                assert _health(f"http://127.0.0.1:{port}/v1")["status"] == "ok"
                break
            except OSError:
                assert time.monotonic() < deadline, "relayrl serve did not start"
                time.sleep(0.2)
        doc = (
            (Path(__file__).parents[1] / "docs" / "serving.md")
            .read_text()
            .replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        )
        examples, errors = doc.split("## Errors")
        for part, failing in ((examples, False), (errors, True)):
            curls = [
                c for block in re.findall(r"```bash\n(.*?)```", part, re.S) for c in re.split(r"\n(?=curl )", block)
            ]
            for curl in (c for c in curls if c.startswith("curl ")):
                out = subprocess.run(
                    ["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=True
                ).stdout
                assert out and ('"error"' in out) == failing, (curl, out)
                if failing:
                    assert json.loads(out)["error"]["param"] == "max_tokens"
        (code,) = re.findall(r"```python\n(.*?)```", examples, re.S)
        exec(compile(code, "docs/serving.md", "exec"), {})
    finally:
        server.terminate()
        server.wait(timeout=30)
