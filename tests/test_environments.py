"""Multi-turn environments: tool calls parsed and answered, limits enforced, the environment's tokens masked out of
the loss, demonstrations, and runs (local async, resumed after a kill) whose episodes call the tool."""

import json
from pathlib import Path

import gymnasium
import pytest
import torch
from test_resume import killed_after_step_4_resumes_to_the_same_run

from relayrl.algorithms.sequences import to_sequences
from relayrl.config import load_config
from relayrl.controller import train
from relayrl.environments import Environment, EnvironmentConfig, Reply, make_environment
from relayrl.environments.calculator import Calculator, calculate
from relayrl.environments.tools import ChatFormat, TagFormat, ToolCall
from relayrl.generation.episodes import run_episodes
from relayrl.generation.sampler import Sample, SamplingConfig
from relayrl.models import TinySize, build_char_tokenizer, load_model_and_tokenizer
from relayrl.rollout import ENVIRONMENT, POLICY, Message, Rollout
from relayrl.schema import ConfigError
from relayrl.tasks.base import Item
from relayrl.tracking import read_jsonl
from relayrl.training.trainer import AlgorithmConfig, OptimConfig, Sequence, Trainer


def scripted(tok, scripts: dict[str, list[str]]):
    """A sampler that writes each prompt's scripted turns in order (`</s>` = the end-of-sequence token), cut at the
    turn's token budget or at a stop string, as an engine would."""

    def sample(contexts: list[list[int]], cfg: SamplingConfig, turn: int) -> list[Sample]:
        out = []
        for ctx in contexts:
            prompt = next(p for p in scripts if tok.decode(ctx).startswith(p))
            text = scripts[prompt][min(turn, len(scripts[prompt]) - 1)]
            eos = text.endswith("</s>")
            ids = tok(text.removesuffix("</s>"), add_special_tokens=False)["input_ids"] + [tok.eos_token_id] * eos
            reason = "stop" if eos or any(text.endswith(s) for s in cfg.stop_strings) else "length"
            if len(ids) > cfg.max_new_tokens:
                ids, reason = ids[: cfg.max_new_tokens], "length"
            out.append(Sample(ids, [-0.5] * len(ids), reason))
        return out

    return sample


def _episodes(scripts: dict[str, list[str]], max_new_tokens: int = 24, **limits):
    tok = build_char_tokenizer()
    env = Calculator(EnvironmentConfig(**limits))
    items = [Item(p, "") for p in scripts]
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in scripts]
    episodes = run_episodes(scripted(tok, scripts), tok, env, items, prompts, SamplingConfig(max_new_tokens))
    return tok, dict(zip(scripts, episodes, strict=True))


def test_a_tool_call_is_answered_in_the_context_and_the_episode_ends_on_a_turn_without_one():
    tok, eps = _episodes({"Q:a": ["<calc>2+3*4</calc>", "#14</s>"], "Q:b": ["#7</s>"]})
    a, b = eps["Q:a"], eps["Q:b"]
    assert tok.decode(a.completion_ids) == "<calc>2+3*4</calc><out>14</out>#14</s>"
    assert [(m.role, m.start, m.end) for m in a.messages] == [(POLICY, 0, 18), (ENVIRONMENT, 18, 31), (POLICY, 31, 35)]
    assert a.logprobs == [-0.5] * 18 + [0.0] * 13 + [-0.5] * 4  # mu: the policy's tokens only
    assert (a.finish_reason, a.tool_calls, a.turns) == ("stop", 1, ["<calc>2+3*4</calc>", "#14"])
    assert (b.finish_reason, b.tool_calls, len(b.messages)) == ("stop", 0, 1)


def test_turn_and_token_limits_cut_an_episode_and_say_which():
    calls = ["<calc>1+1</calc>"] * 9
    _, eps = _episodes({"Q:turns": calls}, max_turns=3)
    turns = eps["Q:turns"]  # the third call is not answered: no turn could read the reply
    assert (turns.finish_reason, turns.tool_calls, [m.role for m in turns.messages]) == (
        "turns", 2, [POLICY, ENVIRONMENT, POLICY, ENVIRONMENT, POLICY]
    )  # fmt: skip
    _, eps = _episodes({"Q:long": ["<calc>" + "1+" * 20 + "1</calc>"]}, max_new_tokens=24)
    assert eps["Q:long"].finish_reason == "length" and len(eps["Q:long"].completion_ids) == 24  # the turn's budget
    _, eps = _episodes({"Q:ep": calls}, max_new_tokens=24, max_turns=9, max_episode_tokens=40)
    ep = eps["Q:ep"]  # 16 + 8 (reply) + 16: the next reply does not fit
    assert (ep.finish_reason, ep.tool_calls, len(ep.completion_ids)) == ("length", 1, 40)
    _, eps = _episodes({"Q:cut": calls}, max_new_tokens=24, max_turns=9, max_episode_tokens=30)
    assert len(eps["Q:cut"].completion_ids) == 30 and eps["Q:cut"].finish_reason == "length"  # the turn cut at 30


def test_the_char_tokenizer_keeps_every_newline():
    """A tool's output or a program has blank lines: each newline is a token of its own, never <unk>."""
    tok = build_char_tokenizer()
    ids = tok("a\n\nb", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4 and tok.unk_token_id not in ids and tok.decode(ids) == "a\n\nb"


def test_the_calculator_evaluates_arithmetic_only():
    assert calculate("12*(3+4)-5") == "79" and calculate(" -2*3 ") == "-6"
    for bad in ("__import__('os')", "2**10", "1/0", "x+1", "9" * 30 + "*" + "9" * 40, "(", ""):
        assert calculate(bad) == "error", bad


def test_tool_calls_in_tags_and_in_the_chat_templates_convention():
    tags = TagFormat(("calc", "python"))
    assert tags.parse("x <calc>1+2</calc> y <python>print(3)</python>") == ToolCall("python", "print(3)")
    assert tags.parse("<calc>1+2") is None and tags.stop_strings == ("</calc>", "</python>")
    chat = ChatFormat()
    call = chat.call("calc", "1+2")
    assert chat.parse(f"thinking {call}") == ToolCall("calc", "1+2")
    assert chat.parse('<tool_call>{"name": "f", "arguments": {"a": 1, "b": 2}}</tool_call>') == ToolCall(
        "f", '{"a": 1, "b": 2}'
    )
    assert chat.parse("<tool_call>not json</tool_call>") == ToolCall("", "not json")  # answered with an error
    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<a>"
        "{% endif %}"
    )
    assert tok.decode(chat.reply(tok, "3", after_eos=False)) == "<t>3<a>"  # the tool message, then the assistant's


def test_environment_tokens_are_masked_out_of_the_loss():
    """A rollout whose middle is an environment's reply trains exactly as the hand-built sequence that masks those
    tokens: the same gradients, whatever log-probabilities the masked tokens carry; without the mask they differ."""
    prompt, ids = [5, 6, 7], [10, 11, 12, 20, 21, 22, 13, 14]
    episode = [Message(0, 3, POLICY), Message(3, 6, ENVIRONMENT), Message(6, 8, POLICY)]
    lp = [-1.0, -2.0, -1.5, 0.0, 0.0, 0.0, -0.7, -0.3]
    rollouts = [
        Rollout(0, 0, prompt, ids, lp, 0, "", "stop", messages=episode, reward=1.0),
        Rollout(0, 1, prompt, ids[:3], lp[:3], 0, "", "stop", reward=0.0),
    ]
    seqs = to_sequences(rollouts, "rloo")
    assert seqs[0].loss_mask == [1, 1, 1, 0, 0, 0, 1, 1] and seqs[1].loss_mask is None
    hand_lp = [-1.0, -2.0, -1.5, -9.0, -9.0, -9.0, -0.7, -0.3]  # mu of masked tokens must not matter
    hand = [
        Sequence(prompt, ids, hand_lp, [1.0] * 8, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]),  # rloo of (1, 0)
        Sequence(prompt, ids[:3], lp[:3], [-1.0] * 3),
    ]
    unmasked = [Sequence(prompt, ids, lp, [1.0] * 8), hand[1]]

    def gradient(batch: list[Sequence]) -> torch.Tensor:
        model, tok = load_model_and_tokenizer("tiny-llama", TinySize(32, 2, 2), seed=0)
        trainer = Trainer(model, OptimConfig(warmup_steps=0), AlgorithmConfig(), tok.pad_token_id, temperature=1.0)
        trainer.accumulate(batch)
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    g = gradient(seqs)
    assert torch.equal(g, gradient(hand))  # the same tokens, the same order of sums: bit for bit
    assert not torch.allclose(g, gradient(unmasked))


def test_a_demonstration_masks_the_replies_and_ends_with_eos(tiny, tmp_path):
    from relayrl.phases import demonstration
    from relayrl.run import Run

    cfg = load_config(None, tiny(tmp_path, **{"environment.name": "calculator", "environment.demonstrations": 1.0}))
    run = Run(cfg, tmp_path)
    item = run.task.train_item(-1)
    seq = demonstration(run, item, -1)
    expr, value = item.meta["expression"], item.answer
    text = run.tokenizer.decode(seq.completion_ids)
    assert text == f"<calc>{expr}</calc><out>{value}</out>#{value}</s>"
    reply = len(f"<out>{value}</out>")
    start = len(f"<calc>{expr}</calc>")
    assert seq.loss_mask == [1.0] * start + [0.0] * reply + [1.0] * (len(text) - 3 - start - reply)


def test_environments_are_chosen_by_name_or_import_path():
    assert make_environment(EnvironmentConfig()) is None
    assert isinstance(make_environment(EnvironmentConfig(name="calculator")), Calculator)
    echo = make_environment(EnvironmentConfig(name="test_environments:Echo"))
    assert echo.respond(Item("", ""), ["<echo>hi</echo>"]) == Reply("hi", reward=0.1)
    with pytest.raises(ConfigError, match=r"environment\.name"):
        load_config(None, ["environment.name=nope"])
    with pytest.raises(ValueError, match="not a subclass"):
        make_environment(EnvironmentConfig(name="test_environments:scripted"))


class Echo(Environment):
    """The few lines a user writes: a tool that says back what it was given, and a small reward for calling it."""

    tools = ("echo",)

    def respond(self, item, turns):
        call = self.format.parse(turns[-1])
        return Reply(call.argument, reward=0.1) if call else None


ENV_RUN = {"environment.name": "calculator", "sft.steps": 150, "task.arithmetic.max_value": 99}


@pytest.fixture(scope="module")
def env_run(tiny, tmp_path_factory) -> Path:
    """An async run whose warm start demonstrates the calculator."""
    root = tmp_path_factory.mktemp("env")
    return train(
        load_config(None, tiny(root / "runs", **ENV_RUN, **{"rollout.max_new_tokens": 24})), show_progress=False
    )


def test_an_async_run_calls_the_tool_and_trains_only_on_its_own_tokens(env_run):
    records = read_jsonl(env_run / "metrics.jsonl")
    assert all(r["tool_calls"] > 0.5 for r in records)  # most episodes call the calculator
    assert all(r["heldout_tool_calls"] > 0.5 for r in records if "heldout_tool_calls" in r)
    summary = json.loads((env_run / "summary.json").read_text())
    assert summary["rollouts_trained"] > 0 and summary["reward_failures"] == 0


def test_a_multi_turn_run_killed_after_a_checkpoint_resumes_to_the_same_run(env_run, tmp_path):
    """As if killed right after step 4's checkpoint: the episodes in flight (async) were saved with it, those after
    it are sampled again from the same seeds, and the run ends with the same weights and metrics."""
    killed_after_step_4_resumes_to_the_same_run(env_run, tmp_path, logged=4)


class Guess(gymnasium.Env):
    """A Gymnasium text environment: guess the item's number; told higher or lower; reward 1 when found."""

    observation_space = action_space = gymnasium.spaces.Text(64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.target = int(options["answer"])
        return "guess", {}

    def step(self, action):
        guess = int(action.strip("#</s> ") or -1)
        found = guess == self.target
        return ("right" if found else "higher" if guess < self.target else "lower"), float(found), found, False, {}


def test_a_gymnasium_text_environment_runs_unchanged():
    gymnasium.register("relayrl-test/Guess-v0", entry_point=Guess, disable_env_checker=True)
    tok = build_char_tokenizer()
    env = make_environment(
        EnvironmentConfig(name="gymnasium", gym_id="relayrl-test/Guess-v0", max_turns=5, max_episode_tokens=200)
    )
    scripts = {"Q:a": ["#5</s>", "#9</s>", "#7</s>", "#8</s>"], "Q:b": ["#3</s>"] * 9}
    items = [Item("Q:a", "7"), Item("Q:b", "4")]
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in scripts]
    a, b = run_episodes(scripted(tok, scripts), tok, env, items, prompts, SamplingConfig(16))
    assert tok.decode(a.completion_ids, skip_special_tokens=True) == "#5<out>higher</out>#9<out>lower</out>#7"
    assert (a.finish_reason, a.env_reward, a.tool_calls) == ("stop", 1.0, 2)  # found on the third turn
    assert (b.finish_reason, b.env_reward, b.tool_calls) == ("turns", 0.0, 4)
