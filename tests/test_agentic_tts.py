"""Agentic test-time scaling (relayrl/tts/agentic.py): scripted episodes on a small HumanEval-style problem, run in
the code-feedback environment and the sandbox, with a scripted summarizer and judge; and `relayrl tts` end to end."""

import json
import re
import string

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from relayrl import build
from relayrl.cli import main
from relayrl.config import AGENTIC_TTS_METHODS, load_config
from relayrl.generation.sampler import Sample, encode_prompt
from relayrl.models import TinySize, build_tiny_model
from relayrl.rewards.judge import Verdict
from relayrl.tasks.base import Item
from relayrl.tasks.humaneval import CHAT, public_examples
from relayrl.tts.agentic import AgenticMethods

PROMPT = (
    'def double(x):\n    """Twice x.\n'
    + "".join(f"    >>> double({x})\n    {2 * x}\n" for x in (2, 0, -3))
    + '    """\n'
)
TEST = "def check(f):\n    assert f(5) == 10 and f(-1) == -2\n"
ITEM = Item(
    ({"role": "user", "content": f"{CHAT}```python\n{PROMPT}```"},),
    json.dumps({"prompt": PROMPT, "test": TEST, "entry_point": "double"}),
    meta={"examples": public_examples(PROMPT), "prefix": PROMPT},
)
MARK = re.compile(r"<(\d+)\.(\d+)>")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A token per printable character, and a chat template: token counts are character counts."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(["<pad>", "</s>", *string.printable])}, "</s>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return fast


def turn(i: int, k: int, expression: str) -> str:
    return f"<{i}.{k}>\n```python\ndef double(x):\n    return {expression}\n```"


class Scripted:
    """A generation engine: the i-th episode it starts writes `double` returning script i's expressions, one a
    turn (the last one again past its end); a turn's marker <i.k> tells later calls whose context is whose."""

    def __init__(self, tok, scripts: list[list[str]]):
        self.tok, self.scripts, self.prompts = tok, scripts, []  # the opening context of each episode started

    def sample(self, prompts: list[list[int]], cfg, seed: int) -> list[Sample]:
        out = []
        for ids in prompts:
            text = self.tok.decode(ids)
            marks = MARK.findall(text)
            i, k = (int(marks[-1][0]), int(marks[-1][1]) + 1) if marks else (len(self.prompts), 0)
            if not marks:
                self.prompts.append(text)
            written = self.tok(turn(i, k, self.scripts[i][min(k, len(self.scripts[i]) - 1)]))["input_ids"]
            out.append(Sample([*written, self.tok.eos_token_id], [0.0] * (len(written) + 1), "stop"))
        return out


class Summarizer:
    """Names the episode it summarizes (its last turn's number), for 7 tokens."""

    def ask(self, content: str, seed: int = 0) -> tuple[str, int]:
        return f"attempt {MARK.findall(content)[-1][0]}", 7


class Judge:
    """Prefers the summary of episode `favourite`, whichever side it is on, for 3 tokens a call."""

    both_orders = False

    def __init__(self, favourite: int):
        self.favourite = f"attempt {favourite}"

    def compare(self, question: str, a: str, b: str, seed: int = 0) -> Verdict:
        return Verdict(float(b == self.favourite), 3, 0)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def agentic(tok, scripts: list[list[str]], favourite: int = 0, **settings) -> tuple[AgenticMethods, Scripted]:
    overrides = {
        "task.name": "humaneval",
        "environment.name": "code_feedback",
        "environment.tool_format": "chat",
        "environment.max_turns": 2,
        "rollout.max_new_tokens": 200,
        "tts.n": len(scripts),
        **settings,
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()], training=False)
    model = build_tiny_model("tiny-llama", tok, TinySize(32, 2, 2), 0)  # never runs: the summarizer and judge are fakes
    engine = Scripted(tok, scripts)
    methods = AgenticMethods(cfg, build.task(cfg), model, tok, build.environment(cfg), engine)
    methods.summarizer, methods.pairwise = Summarizer(), Judge(favourite)
    return methods, engine


def who(pick: str) -> int:
    """The episode a pick is the final turn of."""
    return int(MARK.findall(pick)[-1][0])


def test_best_of_n_by_examples_majority_by_output_and_the_oracle(tok):
    # final programs on double(2), double(0), double(-3): x**2 passes 2 (gets 9); abs(x)*2, 2*abs(x) and
    # abs(x)+abs(x) pass 2 and agree (get 6): the largest class of outputs, though no two are written alike,
    # while x**2 is the only program written twice; x*2, after a syntax error, passes all 3 and the hidden tests
    scripts = [["x ** 2"], ["x + 2", "abs(x) * 2"], ["2 * abs(x)"], ["x +", "x * 2"], ["x ** 2"], ["abs(x) + abs(x)"]]
    methods, _ = agentic(tok, scripts)
    picks = methods.item(ITEM, ["single", "best_of_n_examples", "majority_output", "pass_at_n"])
    assert {m: who(pick) for m, (pick, _) in picks.items()} == {
        "single": 0,
        "best_of_n_examples": 3,
        "majority_output": 1,
        "pass_at_n": 3,
    }
    scorer = methods.task.scorer
    assert scorer(picks["pass_at_n"][0], ITEM.answer) == 1.0 and scorer(picks["majority_output"][0], ITEM.answer) == 0


def test_token_costs_add_up_and_rtv_picks_the_episode_whose_summary_wins(tok):
    methods, _ = agentic(tok, [["x + 2", "x * 2"], ["x * 2"], ["abs(x) * 2"]], favourite=2)
    picks = methods.item(ITEM, ["single", "best_of_n_examples", "rtv_summaries"])
    prompt = len(encode_prompt(tok, ITEM.prompt))
    assert prompt == len(f"<|user|>\n{ITEM.prompt[0]['content']}\n<|assistant|>\n")

    def written(i: int, k: int, expression: str) -> int:
        return len(turn(i, k, expression)) + 1  # and the end-of-sequence token

    def reply(feedback: str) -> int:  # the tool message, through the chat template
        return len(f"\n<|tool|>\n{feedback}\n<|assistant|>\n")

    # each turn reads its whole context: the prompt, the turns and the replies before it
    first = written(0, 0, "x + 2")
    fixed = prompt + first + (prompt + first + reply("double(0): expected 0, got 2") + written(0, 1, "x * 2"))
    at_once = prompt + written(1, 0, "x * 2")
    wrong = written(2, 0, "abs(x) * 2")  # the second turn is the last allowed: no reply after it
    twice = prompt + wrong + (prompt + wrong + reply("double(-3): expected -6, got 6") + written(2, 1, "abs(x) * 2"))
    episodes = fixed + at_once + twice
    single, best, rtv = (picks[m][1] for m in ("single", "best_of_n_examples", "rtv_summaries"))
    assert (single.tokens, single.generation_tokens) == (fixed, fixed)
    assert (best.tokens, best.summary_tokens, best.judge_tokens) == (episodes, 0, 0)
    # 3 summaries of 7 tokens; 2 matches of 3: (0, 1) goes to 0, then 2 (a bye) beats 0
    assert (rtv.generation_tokens, rtv.summary_tokens, rtv.judge_tokens, rtv.judge_calls) == (episodes, 21, 6, 2)
    assert rtv.tokens == episodes + 21 + 6
    # the judge's favourite fails the examples; the episodes 0 and 1 end on x*2 and pass them all: the first wins
    assert who(picks["rtv_summaries"][0]) == 2 and who(picks["best_of_n_examples"][0]) == 0


def test_pdr_starts_the_next_rounds_episodes_from_the_best_summaries(tok):
    # round 0 (the shared episodes) passes 1, 3 and 2 examples: the summaries of 1 and 2 open round 1's prompts
    scripts = [["x + 2"], ["x * 2"], ["x ** 2"], ["x + 2"], ["x * 2"], ["abs(x) * 2"]]
    methods, engine = agentic(tok, scripts, favourite=5, **{"tts.n": 3, "tts.pdr_keep": 2, "tts.pdr_rounds": 2})
    picks = methods.item(ITEM, ["best_of_n_examples", "pdr_summaries"])
    (pick, cost), shared = picks["pdr_summaries"], picks["best_of_n_examples"][1].generation_tokens
    assert len(engine.prompts) == 6 and not any("Earlier attempts" in p for p in engine.prompts[:3])
    note = "Earlier attempts, the best first:\nattempt 1\n\nattempt 2\n\n"
    assert all(f"<|user|>\n{note}{CHAT}" in p for p in engine.prompts[3:])
    # the judge's favourite wins the final tournament over round 1 (2 matches); summaries read: 2 for the
    # context, 3 for the tournament
    assert who(pick) == 5 and (cost.summary_tokens, cost.judge_tokens, cost.judge_calls) == (35, 6, 2)
    assert cost.generation_tokens > 2 * shared  # round 1's prompts carry the summaries


def test_relayrl_tts_runs_the_agentic_methods_when_an_environment_is_set(tiny, tmp_path, capsys):
    out = tmp_path / "tts.json"
    settings = {
        "task.name": "humaneval",
        "task.humaneval.format": "completion",  # the builtin tokenizer has no chat template
        "environment.name": "code_feedback",
        "environment.max_turns": 2,
        "rollout.max_new_tokens": 8,
        "tts.n": 2,
        "tts.items": 1,
        "tts.summary_max_tokens": 8,
        "reward.judge_max_tokens": 8,
    }
    main(["tts", *tiny(tmp_path, **settings), "--output", str(out)])
    report = json.loads(out.read_text())
    m = report["methods"]
    assert list(m) == list(AGENTIC_TTS_METHODS) and report["environment"]["name"] == "code_feedback"
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in AGENTIC_TTS_METHODS)
    for r in m.values():
        assert r["tokens"] == r["generation_tokens"] + r["summary_tokens"] + r["judge_tokens"]
    for name in ("majority_output", "best_of_n_examples", "pass_at_n", "rtv_summaries"):
        assert m[name]["generation_tokens"] == m["pass_at_n"]["generation_tokens"] > m["single"]["generation_tokens"]
    assert m["rtv_summaries"]["summary_tokens"] > 0 and m["rtv_summaries"]["judge_calls"] == 1
    assert m["pdr_summaries"]["generation_tokens"] > m["pass_at_n"]["generation_tokens"]


def test_agentic_settings_are_checked(tiny, tmp_path):
    agentic_run = ["task.name=humaneval", "environment.name=code_feedback"]
    with pytest.raises(SystemExit, match=r"tts\.agentic_methods"):
        main(["tts", *tiny(tmp_path), *agentic_run, "tts.agentic_methods=[single,beam]"])
    with pytest.raises(SystemExit, match=r"tts\.pdr_keep"):  # the single-turn rule does not apply: no pdr runs
        main(["tts", *tiny(tmp_path), *agentic_run, "tts.n=1", "tts.methods=[single]"])
