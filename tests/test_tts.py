"""`relayrl tts` end to end on a tiny model: every method's accuracy and the tokens it spent."""

import json

import pytest

from relayrl import build
from relayrl.cli import main
from relayrl.config import TTS_METHODS


def _tts(tiny, tmp_path, **overrides) -> dict:
    out = tmp_path / "tts.json"
    main(["tts", *tiny(tmp_path, **{"tts.items": 3, "tts.n": 4, **overrides}), "--output", str(out)])
    return json.loads(out.read_text())


def test_tts_reports_every_method_with_the_tokens_it_spent(tiny, tmp_path, capsys):
    # greedy candidates: all N of an item are the same length, so their token counts can be checked exactly
    report = _tts(
        tiny, tmp_path, **{"rollout.temperature": 0, "rollout.max_new_tokens": 8, "reward.judge_max_tokens": 8}
    )
    m, items, n = report["methods"], 3, 4
    assert list(m) == list(TTS_METHODS) and report["judge"] == "tiny-llama (the policy)"
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in TTS_METHODS)
    for r in m.values():
        assert 0 <= r["accuracy"] <= 1 and r["tokens"] == r["generation_tokens"] + r["judge_tokens"]
        assert r["judge_failures"] <= r["judge_calls"]
    assert m["single"]["judge_tokens"] == m["majority"]["judge_tokens"] == 0
    assert m["majority"]["generation_tokens"] == n * m["single"]["generation_tokens"]
    for name in ("weighted_majority", "best_of_n"):  # one judge score per candidate
        assert m[name]["generation_tokens"] == m["majority"]["generation_tokens"]
        assert m[name]["judge_calls"] == items * n and m[name]["judge_tokens"] > 0
    assert m["tournament"]["judge_calls"] == items * (n - 1)  # a match per candidate knocked out
    assert (
        m["tournament"]["tokens"] == m["majority"]["tokens"] + m["tournament"]["judge_tokens"] > m["majority"]["tokens"]
    )
    # PDR, 2 rounds: N attempts, N ranked and refined with the best 2 as context, a final tournament
    assert m["pdr"]["judge_calls"] == items * (n + n - 1)
    assert m["pdr"]["generation_tokens"] > m["majority"]["generation_tokens"]  # the context makes longer prompts


def test_tts_with_an_in_process_judge_asked_both_orders(tiny, tmp_path, verdict_judge):
    judge = {
        "reward.judge_model_path": verdict_judge,
        "reward.judge_both_orders": "true",
        "reward.judge_max_tokens": 24,
        "tts.methods": "[single,tournament]",
        "tts.votes": 2,
    }
    m = _tts(tiny, tmp_path, **judge)["methods"]
    assert m["tournament"]["judge_calls"] == 3 * 3 * 2 * 2 and m["tournament"]["judge_failures"] == 0
    # the judge always prefers the second response: asked both ways, every match ties and the first candidate
    # (single's) wins
    assert m["tournament"]["accuracy"] == m["single"]["accuracy"]


def test_tts_rejects_an_unknown_method(tiny, tmp_path):
    with pytest.raises(SystemExit, match=r"tts\.methods"):
        main(["tts", *tiny(tmp_path, **{"tts.methods": "[single,beam]"})])


def test_a_reward_model_decides_tournaments_by_bradley_terry(tiny, tmp_path):
    from relayrl.config import load_config
    from relayrl.models import TinySize, load_model_and_tokenizer
    from relayrl.tts.evaluate import Methods

    rm = tmp_path / "rm"
    main(["rm", "train", "train.steps=20", "train.eval_every=20", "data.synthetic_rows=256", f"output={rm}"])
    rm_judged = {"reward.model": str(rm), "tts.scorer": "reward_model", "tts.match": "reward_model", "tts.n": 5}
    cfg = load_config(None, tiny(tmp_path, **rm_judged))
    model, tokenizer = load_model_and_tokenizer(
        "tiny-llama", TinySize(cfg.model.hidden, cfg.model.layers, cfg.model.heads), 0
    )
    methods, task = Methods(cfg, build.task(cfg), model, tokenizer), build.task(cfg)
    for item in task.heldout()[:3]:
        picks = methods.item(item, ["best_of_n", "tournament"])
        (best, scored), (winner, cost) = picks["best_of_n"], picks["tournament"]
        # the higher reward wins every match (ties: the earlier candidate), so the tournament ends on the
        # candidate best-of-N picks; 5 candidates: 4 matches, each reading both responses
        assert winner == best and cost.judge_calls == 4 and scored.judge_calls == 5
        assert cost.generation_tokens == scored.generation_tokens and cost.judge_tokens > scored.judge_tokens


def test_a_reward_model_match_needs_a_reward_model(tiny, tmp_path):
    with pytest.raises(SystemExit, match=r"tts\.match"):
        main(["tts", *tiny(tmp_path, **{"tts.match": "reward_model", "tts.methods": "[tournament]"})])


def test_an_items_candidates_do_not_depend_on_the_other_methods(tiny, tmp_path):
    """PDR samples more than the N candidates: the next item's candidates must not move with it, so that runs with
    different methods (e.g. an oracle best-of-N beside the full set) compare the same candidates."""
    majority = {"tts.n": 4, "rollout.temperature": 1.0}
    alone = _tts(tiny, tmp_path, **majority, **{"tts.methods": "[majority]"})["methods"]["majority"]
    beside_pdr = _tts(tiny, tmp_path, **majority, **{"tts.methods": "[pdr,majority]"})["methods"]["majority"]
    assert alone == beside_pdr
