"""SPOC: the multi-message format and stop rule, PairSFT data, message-wise rewards and advantages, end to end."""

import json
import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from relayrl.algorithms.advantages import message_rloo
from relayrl.algorithms.sequences import to_sequences
from relayrl.config import ConfigError, load_config
from relayrl.controller import train
from relayrl.evaluation.metrics import spoc_metrics
from relayrl.generation.messages import Span, SpocFormat, token_messages
from relayrl.generation.sampler import SamplingConfig, sample
from relayrl.hf_compat import CACHE
from relayrl.models import build_char_tokenizer
from relayrl.recipes.spoc import build_pair_sft, to_sequence
from relayrl.rewards.spoc import SpocRewards, TeacherWriter, step_template
from relayrl.rewards.verifier import RewardConfig, VerifierScorer
from relayrl.rollout import Rollout
from relayrl.tasks.arithmetic import score_arithmetic
from relayrl.tasks.base import Item
from relayrl.tracking import read_jsonl

FMT = SpocFormat()  # "\nCheck:" ... " Correct? Yes|No", 3 turns
ITEM = Item("Q:23+45-17\nA:", "51", "23+45=68\n68-17=51\n#51")
RIGHT, WRONG = "23+45=68\n68-17=51\n#51", "23+45=68\n68-17=52\n#52"
NO = "\nCheck:68-17=51 Correct? No"
YES = "\nCheck: Correct? Yes"
TOK = build_char_tokenizer()
DECODE = partial(TOK.decode, skip_special_tokens=True)


class Scripted(torch.nn.Module):
    """A 'model' whose row i emits scripts[i] token by token (then keeps repeating its last token)."""

    def __init__(self, scripts: list[list[int]]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the sampler reads the device from it
        self.scripts, self.t = scripts, 0

    def forward(self, input_ids, **kwargs):
        cache = kwargs[CACHE]
        if self.t == 0:  # the cache carries each row's script number, so rows that leave the batch take theirs along
            rows = torch.arange(len(self.scripts), dtype=torch.float).view(-1, 1, 1, 1)
            cache.update(rows, rows, 0)
        rows = cache.layers[0].keys[:, 0, 0, 0].long().tolist()
        logits = torch.full((len(rows), input_ids.shape[1], len(TOK)), -1e9)
        for i, row in enumerate(rows):
            script = self.scripts[row]
            logits[i, -1, script[min(self.t, len(script) - 1)]] = 0.0
        self.t += 1
        return SimpleNamespace(logits=logits)


def _sample(texts: list[str], stop_rule, eos_after: int | None = None) -> list[str]:
    scripts = [TOK(t, add_special_tokens=False)["input_ids"] for t in texts]
    if eos_after is not None:
        scripts[0] = [*scripts[0][:eos_after], TOK.eos_token_id]
    cfg = SamplingConfig(max_new_tokens=200, temperature=0.0, stop_rule=stop_rule)
    prompts = [[1, i] for i in range(len(texts))]  # distinct: the sampler reads a repeated prompt once
    out = sample(Scripted(scripts), prompts, cfg, TOK.eos_token_id, TOK.pad_token_id, decode=TOK.decode)
    return [DECODE(s.completion_ids) for s in out]


def test_stop_rule_first_yes_turn_cap_and_eos():
    wrong_twice = WRONG + NO + "\n" + WRONG + NO + "\n" + RIGHT + YES + "\n#51"
    right = RIGHT + YES + "\nmore"
    corrected = WRONG + NO + "\n" + RIGHT + YES + NO
    assert _sample([right, corrected, wrong_twice], FMT) == [
        RIGHT + YES,
        WRONG + NO + "\n" + RIGHT + YES,
        wrong_twice[:-4],
    ]
    # the turn cap: the second verdict ends it, whatever it says
    assert _sample([wrong_twice], SpocFormat(turn_cap=2)) == [WRONG + NO + "\n" + WRONG + NO]
    # EOS ends a completion before any verdict; without a stop rule nothing else does
    assert _sample([right], FMT, eos_after=5) == [RIGHT[:5]]
    assert _sample([right], None)[0].startswith(right)


def test_parse_covers_the_text_and_stops_reading_at_the_end_verdict():
    text = WRONG + NO + "\n" + RIGHT + YES
    assert FMT.parse(text) == [
        Span("solution", 0, 21),
        Span("verification", 21, 48),
        Span("solution", 48, 70),
        Span("verification", 70, 90),
    ]
    assert FMT.parse(RIGHT) == [Span("solution", 0, len(RIGHT))]
    assert FMT.parse("") == [Span("solution", 0, 0)]
    assert FMT.parse(RIGHT + YES + "\n7")[-1] == Span("verification", 21, 43)  # after the final verdict: still it
    assert FMT.parse(RIGHT + "\nCheck:68")[-1] == Span("verification", 21, 30)  # cut before its verdict
    assert [FMT.verdict(v) for v in (YES, NO, "\nCheck:6")] == [True, False, None]


def test_messages_split_on_token_ids_char_and_bpe_like():
    text = WRONG + NO + "\n" + RIGHT + YES
    ids = TOK(text, add_special_tokens=False)["input_ids"] + [TOK.eos_token_id]
    messages = token_messages(ids, DECODE, FMT.parse(text))
    assert [(m.role, m.start, m.end) for m in messages] == [
        ("solution", 0, 21),
        ("verification", 21, 48),
        ("solution", 48, 70),
        ("verification", 70, 91),  # the EOS goes with the last message
    ]
    # multi-character tokens: one that straddles a boundary ("2\nCh") belongs to the message it starts in
    pieces = ["23+45=68\n", "68-17=5", "2\nCh", "eck:68-17=51", " Correct?", " No", "\n", "23+45=68\n68-17=51\n#51"]
    bpe_text = "".join(pieces)
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    messages = token_messages(list(range(len(pieces))), decode, FMT.parse(bpe_text))
    assert [(m.role, m.start, m.end) for m in messages] == [
        ("solution", 0, 3),
        ("verification", 3, 6),
        ("solution", 6, 8),
    ]


def test_pair_sft_balances_right_and_wrong_and_masks_wrong_solutions():
    items = [ITEM, Item("Q:1+1\nA:", "2", "1+1=2\n#2"), Item("Q:5-3\nA:", "2", "5-3=2\n#2")]
    samples = [[RIGHT, RIGHT, RIGHT, WRONG], ["1+1=2\n#2"] * 2, ["5-3=1\n#1", "5-4=1\n#1", "5-3=2\n#2"]]
    examples = build_pair_sft(items, samples, score_arithmetic, step_template, FMT)
    kinds = [e.messages[0][2] for e in examples]  # is the first solution trained on: a right one
    assert len(examples) == 4 and kinds.count(True) == kinds.count(False) == 2  # "1+1" had no wrong sample
    assert {str(e.prompt) for e in examples} == {"Q:23+45-17\nA:", "Q:5-3\nA:"}
    fixed = examples[1]
    assert "".join(t for _, t, _ in fixed.messages) == WRONG + NO + "\n" + RIGHT + YES
    assert "".join(t for _, t, _ in examples[3].messages) == "5-3=1\n#1\nCheck:5-3=2 Correct? No\n5-3=2\n#2" + YES
    seq = to_sequence(fixed, TOK)
    assert seq.completion_ids[-1] == TOK.eos_token_id and len(seq.loss_mask) == len(seq.completion_ids)
    assert seq.loss_mask == [0.0] * len(WRONG) + [1.0] * (len(seq.completion_ids) - len(WRONG))
    assert to_sequence(examples[0], TOK).loss_mask == [1.0] * (len(RIGHT + YES) + 1)


def test_step_template_names_the_first_wrong_step():
    assert step_template(ITEM, WRONG, False) == "68-17=51"
    assert step_template(ITEM, "23+44=67\n67-17=50\n#50", False) == "23+45=68"
    assert step_template(ITEM, "23+45=68", False) == "68-17=51"  # a missing step
    assert step_template(ITEM, RIGHT, True) == ""


def test_teacher_writer_prompts_with_question_solution_and_answer():
    prompts = []

    def stub(prompt):
        prompts.append(prompt)
        return "Step 2 is wrong: 68-17=51.\nCheck: Correct? Yes"  # a careless teacher writes the markers too

    writer = TeacherWriter(stub)
    critique = writer(ITEM, WRONG, False)
    assert "23+45-17" in prompts[0] and WRONG in prompts[0] and "51" in prompts[0]
    assert writer(ITEM, RIGHT, True) == "" and len(prompts) == 1
    verification = FMT.verification(critique, False)
    assert FMT.parse(RIGHT + verification) == [
        Span("solution", 0, 21),
        Span("verification", 21, 21 + len(verification)),
    ]
    assert FMT.verdict(verification) is False


def test_message_rloo_hand_worked():
    # three samples of one prompt: (solution, verification, ...) rewards
    samples = [
        [("solution", 0.0), ("verification", 1.0), ("solution", 1.0), ("verification", 1.0)],  # wrong, No, right, Yes
        [("solution", 1.0), ("verification", 1.0)],  # right, Yes
        [("solution", 0.0), ("verification", 0.0)],  # wrong, Yes
    ]
    # solutions 0,1,1,0: unbiased std sqrt(1/3). Sample 0's baseline: samples 1 and 2 -> 0.5;
    # sample 1's: samples 0 and 2 -> 1/3; sample 2's: samples 0 and 1 -> 2/3.
    s = math.sqrt(1 / 3)
    # verifications 1,1,1,0: std 0.5. Baselines: sample 0 -> mean(1, 0) = 0.5; 1 -> mean(1, 1, 0); 2 -> 1.
    expected = [
        [(0 - 0.5) / s, (1 - 0.5) / 0.5, (1 - 0.5) / s, (1 - 0.5) / 0.5],
        [(1 - 1 / 3) / s, (1 - 2 / 3) / 0.5],
        [(0 - 2 / 3) / s, (0 - 1) / 0.5],
    ]
    got = message_rloo(samples, eps=0.0, verify_baseline="role")
    assert [len(a) for a in got] == [4, 2, 2]
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e)  # Python floats (statistics.fmean/stdev), eps=0: a few double roundings
    # verify_baseline="truth": verdicts on wrong solutions (samples 0 and 2: rewards 1, 0, std sqrt(1/2)) and on
    # right ones (samples 0 and 1: both 1, std 0 -> advantage 0) are separate pools; solutions are unchanged.
    v = math.sqrt(1 / 2)
    expected = [
        [(0 - 0.5) / s, (1 - 0) / v, (1 - 0.5) / s, 0.0],
        [(1 - 1 / 3) / s, 0.0],
        [(0 - 2 / 3) / s, (0 - 1) / v],
    ]
    for g, e in zip(message_rloo(samples), expected, strict=True):
        # the default eps=1e-6 joins the std (>= sqrt(1/3)): each advantage is <= 1e-6 / 0.577 = 1.7e-6 relative off
        assert g == pytest.approx(e, rel=1e-5)
    with pytest.raises(ValueError, match="verify_baseline"):
        message_rloo(samples, verify_baseline="turn")
    assert message_rloo([[("solution", 1.0)], [("solution", 1.0), ("verification", 1.0)]]) == [[0.0], [0.0, 0.0]]


def _rollout(text: str, index: int = 0) -> Rollout:
    ids = TOK(text, add_special_tokens=False)["input_ids"]
    messages = token_messages(ids, DECODE, FMT.parse(text))
    return Rollout(0, index, [1], ids, [0.0] * len(ids), 0, text, "stop", answer="51", messages=messages)


def test_per_message_rewards_are_scored_in_workers_and_spread_over_tokens():
    texts = [WRONG + NO + "\n" + RIGHT + YES, RIGHT + YES, WRONG + YES]
    rollouts = [_rollout(t, i) for i, t in enumerate(texts)]
    mismatched = Rollout(0, 3, [1], [5, 6], [0.0, 0.0], 0, WRONG + YES, "stop", answer="51")  # one message
    scorer = VerifierScorer(SpocRewards(FMT, score_arithmetic), RewardConfig(timeout=5.0))
    try:
        stats = scorer.score([*rollouts, mismatched])
    finally:
        scorer.close()
    assert [[m.reward for m in r.messages] for r in rollouts] == [[0.0, 1.0, 1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert [r.reward for r in rollouts] == [0.75, 1.0, 0.0]
    assert stats["reward_errors"] == 1 and mismatched.reward_failed and mismatched.messages[0].reward is None
    seqs = to_sequences(rollouts, "grpo")  # message-wise rewards: message-wise RLOO, whatever the estimator
    advantages = message_rloo([r.message_rewards() for r in rollouts])
    for r, seq, adv in zip(rollouts, seqs, advantages, strict=True):
        assert seq.advantages == [a for m, a in zip(r.messages, adv, strict=True) for _ in range(m.end - m.start)]
    assert SpocRewards(FMT, score_arithmetic).final(texts[0], "51") == 1.0


def test_spoc_metrics():
    completions = [
        [("solution", 0.0), ("verification", 1.0), ("solution", 1.0), ("verification", 1.0)],  # wrong -> right
        [("solution", 1.0), ("verification", 0.0), ("solution", 0.0)],  # right, said No, then wrong
        [("solution", 0.0), ("verification", 0.0)],  # wrong, said Yes
        [("solution", 1.0)],  # no verification at all
    ]
    m = spoc_metrics(completions)
    assert m["final_accuracy"] == 0.5 and m["first_accuracy"] == 0.5
    assert m["verification_tpr"] == 0.5  # after the right solutions: a Yes and a No
    assert m["verification_tnr"] == 0.5  # after the wrong ones: a No and a Yes
    assert m["turns"] == 1.5 and m["wrong_to_right"] == 0.5 and m["right_to_wrong"] == 0.5
    assert spoc_metrics([[("solution", 1.0)]])["verification_tnr"] is None


@pytest.mark.parametrize(
    ("overrides", "named"),
    [(["recipe=dpo"], "recipe"), (["recipe=spoc", "spoc.writer=teacher"], "spoc.teacher")],
)
def test_bad_spoc_config_is_named(overrides, named):
    with pytest.raises(ConfigError, match=rf"^{named}: "):
        load_config(None, overrides)


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith(("seconds", "_per_second", "_share"))} for r in records]


SPOC_RUN = {
    "mode": "sync",
    "recipe": "spoc",
    "steps": 4,
    "eval_every": 2,
    "checkpoint_every": 2,
    "sft.lr": 0.01,
    "task.arithmetic.max_value": 3,  # 32 distinct problems: tiny's 16 held out leave 16 to train on
    "spoc.pair_questions": 16,
    "spoc.pair_samples": 8,
    "spoc.pair_sft_steps": 4,
    "spoc.max_new_tokens": 48,
}


def test_tiny_spoc_run_reports_its_metrics_and_resumes_from_pair_sft(tiny, tmp_path):
    run_dir = train(load_config(None, tiny(tmp_path / "spoc", **SPOC_RUN)), show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["recipe"] == "spoc" and summary["steps"] == 4 and summary["pair_sft"]["examples"] > 0
    spoc_keys = {"final_accuracy", "first_accuracy", "verification_tpr", "verification_tnr", "turns"}
    assert spoc_keys | {"wrong_to_right", "right_to_wrong"} <= summary["heldout_messages_end"].keys()
    assert summary["heldout_accuracy_end"] == summary["heldout_messages_end"]["final_accuracy"]
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert all(f"train_{k}" in r for r in records for k in spoc_keys) and "heldout_turns" in records[-1]
    assert "self-correction" in (run_dir / "report.md").read_text()

    # a crash right after the PairSFT data was saved: the resumed run trains on the same data, to the same end
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "pair_sft").is_dir() and (ckpts / "sft").is_dir()
    (ckpts / "latest").write_text("pair_sft")
    (run_dir / "summary.json").unlink()
    train(resume=run_dir, show_progress=False)
    assert _untimed(read_jsonl(run_dir / "metrics.jsonl")) == _untimed(records)
    assert json.loads((run_dir / "summary.json").read_text())["heldout_messages_end"] == summary["heldout_messages_end"]
