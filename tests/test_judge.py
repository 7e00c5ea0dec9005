"""relayrl serve answers real HTTP requests; LLM-judge rewards (pointwise and pairwise, from an endpoint or a model
run in-process) count parse failures and dead judges."""

import json
import urllib.request

import pytest

from relayrl import build
from relayrl.config import ConfigError, load_config
from relayrl.generation.chat import ChatModel
from relayrl.rewards.judge import (
    PairwiseJudge,
    PointwiseJudge,
    make_judge,
    pair_samples,
    parse_score,
    parse_winner,
)
from relayrl.rewards.verifier import RewardConfig, VerifierScorer, reward_args
from relayrl.rollout import Rollout
from relayrl.serving.app import ServeConfig


@pytest.fixture(scope="module")
def server(live_server):
    with live_server(ChatModel("tiny-llama"), ServeConfig(max_new_tokens=16)) as url:
        yield url


@pytest.fixture(scope="module")
def verdict_server(live_server, verdict_judge):
    with live_server(ChatModel(verdict_judge), ServeConfig(max_new_tokens=16)) as url:
        yield url


def test_parse_score():
    assert parse_score("Looks right. Score: 8", 0, 10) == 8.0
    assert parse_score("score=3.5 then Score: 9", 0, 10) == 9.0  # the last one
    assert parse_score("Score: 11", 0, 10) is None  # out of range
    assert parse_score("no verdict", 0, 10) is None


def test_server_answers_chat_completions_over_http(server):
    body = {"model": "x", "messages": [{"role": "user", "content": "Q:1+2"}], "max_tokens": 8}
    json_type = {"Content-Type": "application/json"}  # a body of another type is not read as JSON (docs/serving.md)
    request = urllib.request.Request(server + "/chat/completions", json.dumps(body).encode(), json_type)
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    assert reply["object"] == "chat.completion"
    assert reply["usage"]["completion_tokens"] <= 8 and reply["usage"]["prompt_tokens"] > 0
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    with urllib.request.urlopen(server + "/models", timeout=30) as response:
        assert json.loads(response.read())["data"][0]["id"] == "tiny-llama"
    bad = urllib.request.Request(server + "/chat/completions", b'{"messages": 3}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=30)
    assert err.value.code == 400


def _rollouts(n: int) -> list[Rollout]:
    return [Rollout(i, 0, [1], [2], [0.0], 0, "#5", "stop", answer="5") for i in range(n)]


def test_judge_rewards_count_parse_failures_and_a_dead_judge_is_not_fatal(server):
    # an untrained model never writes "Score: N": every reply is a counted parse failure
    scorer = VerifierScorer(PointwiseJudge(server, max_tokens=8), RewardConfig(timeout=60, workers=2))
    rollouts = _rollouts(4)
    assert scorer.score(rollouts) == {"reward_timeouts": 0.0, "reward_errors": 4.0}
    assert all(r.reward_failed and r.reward == 0.0 for r in rollouts)
    scorer.close()
    dead = VerifierScorer(PointwiseJudge("http://127.0.0.1:9/v1", timeout=2), RewardConfig(timeout=10))
    assert dead.score(_rollouts(2)) == {"reward_timeouts": 0.0, "reward_errors": 2.0}
    dead.close()


def test_a_judge_that_scores_is_scaled_to_unit_rewards(monkeypatch):
    judge = PointwiseJudge("http://unused/v1")
    monkeypatch.setattr(PointwiseJudge, "ask", lambda self, content: ("Fine work. Score: 7", 12))
    assert judge("#5", "5") == pytest.approx(0.7)  # 7 / 10 in Python floats: one rounding, rel 1e-6 is slack


def test_runs_rewarded_by_a_reward_model_or_a_judge_are_audited_by_the_gold_verifier(tiny, tmp_path, server):
    from relayrl.cli import main
    from relayrl.config import load_config
    from relayrl.controller import train
    from relayrl.tracking import read_jsonl

    rm = tmp_path / "rm"
    main(["rm", "train", "train.steps=20", "train.eval_every=20", "data.synthetic_rows=256", f"output={rm}"])
    run = train(
        load_config(
            None, tiny(tmp_path / "rm_run", steps=3, **{"reward.source": "reward_model", "reward.model": str(rm)})
        ),
        show_progress=False,
    )
    records = read_jsonl(run / "metrics.jsonl")
    assert records[-1]["reward_errors"] == 0
    assert len({round(r["reward"], 6) for r in records}) == 3  # a scalar model's rewards, not 0/1 counts
    audit = records[-1]
    # the gap is that difference, in Python floats (one rounding, then a JSON round trip that keeps doubles exactly)
    assert audit["heldout_gold_gap"] == pytest.approx(audit["heldout_reward"] - audit["heldout_accuracy"])
    assert (run / "report.png").exists()

    judged = train(
        load_config(
            None,
            tiny(
                tmp_path / "judge_run",
                steps=2,
                eval_every=2,
                # 16 tokens a reply: an untrained model writes no score in 256 either, and 16 takes 1/16 the time
                **{
                    "reward.source": "judge",
                    "reward.judge_url": server,
                    "reward.timeout": 60,
                    "reward.judge_max_tokens": 16,
                },
            ),
        ),
        show_progress=False,
    )
    records = read_jsonl(judged / "metrics.jsonl")
    # the untrained served model never writes a score: every reward is a counted failure, and the run goes on
    assert records[-1]["reward_errors"] == 16 and len(records) == 2
    assert records[-1]["heldout_reward"] is None and records[-1]["heldout_reward_failures"] == 16


def test_parse_winner():
    assert parse_winner("A is close, but Winner: B") == 1
    assert parse_winner("winner=[[a]]") == 0
    assert parse_winner("Winner: B ... on reflection Winner: A") == 0  # the last one
    assert parse_winner("both are fine") is None
    assert parse_winner("Winner: Bob") is None


def test_pairwise_judge_orders_references_opponents_and_counts_parse_failures(monkeypatch):
    asked = []

    def prefers_the_right_answer(self, content, seed=0):  # order-blind: picks whichever response says #5
        asked.append(content)
        return ("Winner: A" if content.index("#5") < content.index("Response B") else "Winner: B"), 10

    monkeypatch.setattr(PairwiseJudge, "ask", prefers_the_right_answer)
    judge = PairwiseJudge(reference="#{answer}", both_orders=True)
    assert judge("#5", "4", "Q:2+3") == 1.0  # beats the reference "#4" in both orders
    assert judge.compare("Q:2+3", "#4", "#5").preference == 1.0 and judge.compare("q", "#5", "#4").tokens == 20
    assert judge("#4", "7", "Q:2+3", opponent="#5") == 0.0  # against another sample, not the reference
    assert "#7" not in asked[-1] and "#5" in asked[-1]
    monkeypatch.setattr(PairwiseJudge, "ask", lambda self, content, seed=0: ("no idea", 3))
    assert PairwiseJudge(both_orders=True).compare("q", "a", "b").__dict__ == {
        "preference": None,
        "tokens": 6,
        "unparsed": 2,
    }
    with pytest.raises(ValueError):
        PairwiseJudge()("a", "b", "q")


def test_both_orders_cancel_a_served_judges_position_bias(verdict_server):
    # the served judge always answers "Winner: B": shown first, a completion always loses; averaged over both
    # orders the bias cancels to a tie
    assert PairwiseJudge(verdict_server, max_tokens=24)("#5", "5", "Q:2+3\nA:") == 0.0
    both = PairwiseJudge(verdict_server, max_tokens=24, both_orders=True)
    verdict = both.compare("Q:2+3\nA:", "#5", "#6")
    assert verdict.preference == 0.5 and verdict.unparsed == 0 and verdict.tokens > 0
    assert both("#5", "5", "Q:2+3\nA:") == 0.5


def test_an_in_process_judge_gives_the_http_judges_replies_and_rewards(server, verdict_judge, verdict_server):
    content = "Question:\nQ:1+2\nA:\n\nResponse:\n#3\n\nRate the response. End with Score: N."
    untrained = (PointwiseJudge(server, max_tokens=12), PointwiseJudge(model_path="tiny-llama", max_tokens=12))
    assert untrained[0].ask(content) == untrained[1].ask(content)  # the same model, the same text and tokens
    rollouts = [Rollout(i, 0, [1], [2], [0.0], 0, f"#{i}", "stop", answer="3", prompt="Q:1+2\nA:") for i in range(3)]
    for kind in ("pointwise", "pairwise"):
        http = make_judge(RewardConfig(judge_url=verdict_server, judge_max_tokens=24), kind)
        expected = [http(*reward_args(r, True)) for r in rollouts]
        local = make_judge(RewardConfig(judge_model_path=verdict_judge, judge_max_tokens=24), kind)
        scorer = VerifierScorer(local, RewardConfig(timeout=60))  # the judge model loads in the reward worker
        assert scorer.score(rollouts) == {"reward_timeouts": 0.0, "reward_errors": 0.0}
        scorer.close()
        assert [r.reward for r in rollouts] == expected == ([0.7] * 3 if kind == "pointwise" else [0.0] * 3)


def test_pair_samples_gives_each_rollout_another_of_its_prompt():
    rollouts = [Rollout(p, i, [1], [2], [0.0], 0, f"{p}-{i}", "stop") for p, n in ((0, 3), (1, 1)) for i in range(n)]
    pair_samples(rollouts)
    assert [r.opponent for r in rollouts] == ["0-1", "0-2", "0-0", ""]  # an only sample meets the reference
    assert reward_args(rollouts[0], True)[-1] == "0-1" and len(reward_args(rollouts[3], True)) == 3
    assert reward_args(rollouts[0], False) == ("0-0", "")


def test_judge_config_names_the_field():
    for overrides, field in [
        (["reward.source=judge"], "reward.judge_url"),
        (["reward.judge_url=http://x/v1", "reward.judge_model_path=tiny-llama"], "reward.judge_model_path"),
        (["reward.judge_against=sample"], "reward.judge_against"),
        (["reward.judge_kind=ranked"], "reward.judge_kind"),
    ]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, overrides)
    cfg = load_config(None, ["reward.source=judge", "reward.judge_model_path=tiny-llama", "reward.judge_kind=pairwise"])
    assert isinstance(build.reward_fn(cfg, build.task(cfg)), PairwiseJudge)


def test_a_run_rewarded_by_an_in_process_pairwise_judge_against_other_samples(tiny, tmp_path, verdict_judge):
    from relayrl.controller import train
    from relayrl.tracking import read_jsonl

    judge = {
        "reward.source": "judge",
        "reward.judge_model_path": verdict_judge,
        "reward.judge_kind": "pairwise",
        "reward.judge_against": "sample",
        "reward.judge_both_orders": "true",
        "reward.judge_max_tokens": 24,
        "reward.timeout": 60,
        "rollout.prompts_per_step": 2,
        "rollout.samples_per_prompt": 2,
        "task.arithmetic.heldout_size": 4,
    }
    run = train(load_config(None, tiny(tmp_path, steps=2, eval_every=2, **judge)), show_progress=False)
    records = read_jsonl(run / "metrics.jsonl")
    # a judge biased to the second response, asked both ways, ties every pair: every reward is 0.5
    assert [r["reward"] for r in records] == [0.5, 0.5] and records[-1]["reward_errors"] == 0
    assert records[-1]["heldout_reward"] == 0.5 and records[-1]["heldout_reward_failures"] == 0  # vs the reference
