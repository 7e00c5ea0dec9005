"""relayrl serve answers real HTTP requests; LLM-judge rewards count parse failures and dead judges."""

import json
import threading
import urllib.request

import pytest

from relayrl.rewards.judge import PointwiseJudge, parse_score
from relayrl.rewards.verifier import RewardConfig, VerifierScorer
from relayrl.rollout import Rollout
from relayrl.serve import ChatModel, make_server


@pytest.fixture(scope="module")
def server():
    srv = make_server(ChatModel("tiny-llama", max_new_tokens=16), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_parse_score():
    assert parse_score("Looks right. Score: 8", 0, 10) == 8.0
    assert parse_score("score=3.5 then Score: 9", 0, 10) == 9.0  # the last one
    assert parse_score("Score: 11", 0, 10) is None  # out of range
    assert parse_score("no verdict", 0, 10) is None


def test_server_answers_chat_completions_over_http(server):
    body = {"model": "x", "messages": [{"role": "user", "content": "Q:1+2"}], "max_tokens": 8}
    request = urllib.request.Request(server + "/chat/completions", json.dumps(body).encode(), method="POST")
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
    assert judge("#5", "5") == pytest.approx(0.7)


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
    assert audit["heldout_gold_gap"] == pytest.approx(audit["heldout_reward"] - audit["heldout_accuracy"])
    assert (run / "report.png").exists()

    judged = train(
        load_config(
            None,
            tiny(
                tmp_path / "judge_run",
                steps=2,
                eval_every=2,
                **{"reward.source": "judge", "reward.judge_url": server, "reward.timeout": 60},
            ),
        ),
        show_progress=False,
    )
    records = read_jsonl(judged / "metrics.jsonl")
    # the untrained served model never writes a score: every reward is a counted failure, and the run goes on
    assert records[-1]["reward_errors"] == 16 and len(records) == 2
    assert records[-1]["heldout_reward"] is None and records[-1]["heldout_reward_failures"] == 16
