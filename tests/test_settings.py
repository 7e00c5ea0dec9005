"""The settings schema: every leaf of Config fuzzed with bad values, and the bad-settings bugs one by one."""

import copy
import dataclasses
import math
import re
import time
import typing

import pytest

from relayrl.cli import main
from relayrl.config import Config, ConfigError, load_config, validate
from relayrl.models import load_model_and_tokenizer
from relayrl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from relayrl.training.reward_model import RMConfig

ONE_LINE = re.compile(r"^[a-z_0-9]+(\.[a-z_0-9]+)*: [^\n]+$")  # "dotted.field: problem", one line


def leaves(obj, prefix=""):
    """(dotted key, type hint, owner dataclass, field name) for every leaf field of a config tree."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name]


LEAVES = list(leaves(Config()))

# (value, must be rejected): set on a validated default Config in Python
BAD_VALUES = {
    int: [("abc", True), (1.5, True), (True, True), (-1, False), (0, False), (10**12, False), (10**30, True)],
    float: [("abc", True), (math.nan, True), (math.inf, True), (-1.0, False), (0.0, False), (1e308, False)],
    str: [(5, True), ("", False), ("no such choice", False)],
    bool: [("yes", True), (1, True)],
    list: [("single", True), ([], False), (["no such method"], False)],
    tuple: [((math.nan, 0.5), True), ((-1.0, 0.5), False), ((0.5, 1.0), False)],
    dict: [(5, True), ({"seed": 1}, False)],
}
# one wrong type per kind, given as a dotted override: OmegaConf's conversions
BAD_OVERRIDES = {int: "abc", float: "nan", str: "[1]", bool: "maybe", list: "5", tuple: "[0.1]", dict: "5"}


def _kind(hint):
    return typing.get_origin(hint) or hint


def assert_names(message: str, key: str) -> None:
    """One line, "field: problem", naming `key` (a rule across fields names it by its last part, at least)."""
    assert ONE_LINE.match(message.removeprefix("relayrl: error: ")), message
    assert key.rsplit(".", 1)[-1] in message, message


def _set(cfg, key, value):
    *path, name = key.split(".")
    for part in path:
        cfg = getattr(cfg, part)
    object.__setattr__(cfg, name, value)


def test_every_leaf_is_fuzzed():
    assert len(LEAVES) > 100 and {_kind(h) for _, h in LEAVES} <= BAD_VALUES.keys()


@pytest.mark.parametrize(("key", "hint"), LEAVES, ids=[k for k, _ in LEAVES])
def test_bad_values_of_every_field_are_rejected_in_one_line(key, hint):
    default = load_config(None, [])
    for value, must_reject in BAD_VALUES[_kind(hint)]:
        cfg = copy.deepcopy(default)
        _set(cfg, key, value)
        start = time.perf_counter()
        try:
            validate(cfg)
        except ConfigError as err:
            assert_names(str(err), key)
        else:
            assert not must_reject, f"{key}={value!r} was accepted"
        assert time.perf_counter() - start < 5
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={BAD_OVERRIDES[_kind(hint)]}"])
    assert_names(str(err.value), key)
    assert str(err.value).endswith("(command line)")


@pytest.mark.parametrize(
    "override",
    [
        "steps=abc",
        "steps=1.5",
        "seed=100000000000000000000000000000",
        "rollout.temperature=0",
        "optim.warmup_steps=-1",
        "task.arithmetic.heldout_size=0",
        "model.name_or_path=./nope/model",
        "tts.methods=[]",
    ],
)
def test_the_cli_rejects_in_one_line_before_any_run_folder(tmp_path, override):
    runs = tmp_path / "runs"
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(["train", override, f"run_dir={runs}"])
    assert time.perf_counter() - start < 5
    message = str(exit_.value.code)
    assert message.startswith("relayrl: error: ") and message.endswith("(command line)")
    assert_names(message, override.split("=")[0])
    assert not runs.exists()


def test_huge_but_possible_values_pass():
    cfg = load_config(None, ["steps=1000000000000", "optim.lr=1e308", "rollout.max_new_tokens=1000000000"])
    assert cfg.steps == 10**12


def test_temperature_zero_is_greedy_evaluation_not_training():
    with pytest.raises(ConfigError, match=r"^rollout\.temperature: must be > 0 for training; got 0\.0"):
        load_config(None, ["rollout.temperature=0"])
    assert load_config(None, ["rollout.temperature=0"], training=False).rollout.temperature == 0


def test_errors_name_the_yaml_file_and_line(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("steps: 5\nrollout:\n  top_p: 0.5\n\n  temperature: 0\noptim:\n  warmup_steps: -2\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value) == f"optim.warmup_steps: must be >= 0; got -2 ({path}:7)"
    with pytest.raises(ConfigError, match=rf"^rollout.temperature: .* \({re.escape(str(path))}:5\)$"):
        load_config(str(path), ["optim.warmup_steps=0"])
    with pytest.raises(ConfigError, match=r"\(command line\)$"):  # the last to set a field is named
        load_config(str(path), ["optim.warmup_steps=0", "rollout.temperature=0"])
    path.write_text("steps: abc\n")
    with pytest.raises(ConfigError, match=rf"^steps: .*Integer \({re.escape(str(path))}:1\)$"):
        load_config(str(path))


def test_a_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("steps: 5\nrollout:\n  temperature: [0.5\n")
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(path), f"run_dir={tmp_path / 'runs'}"])
    assert re.fullmatch(rf"relayrl: error: {re.escape(str(path))}:3: not valid YAML: [^\n]+", exit_.value.code)
    with pytest.raises(SystemExit, match=r"no-such\.yaml: No such file"):
        main(["train", str(tmp_path / "no-such.yaml")])
    assert not (tmp_path / "runs").exists()
    for text, line, problem in [
        ("steps: 1\nsteps: 2\n", 2, "not valid YAML: found duplicate key"),
        ("- 1\n", 1, "not a mapping"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:{line}: {problem}"):
            load_config(str(path))


def test_warmup_steps_must_not_be_negative():
    for steps in (-1, -2):
        with pytest.raises(ConfigError, match=rf"^optim\.warmup_steps: must be >= 0; got {steps}"):
            load_config(None, [f"optim.warmup_steps={steps}"])
    assert load_config(None, ["optim.warmup_steps=0"]).optim.warmup_steps == 0


@pytest.mark.parametrize(
    "override",
    [
        "task.arithmetic.heldout_size=0",
        "task.reasoning_gym.heldout_size=0",
        "task.dataset.heldout_max=0",
        "task.dataset.heldout_fraction=0",
    ],
)
def test_every_task_holds_out_at_least_one_item(override):
    with pytest.raises(ConfigError, match=rf"^{re.escape(override.split('=')[0])}: must be > 0"):
        load_config(None, [override])


def test_arithmetic_held_out_set_must_leave_problems_to_train_on():
    small = ArithmeticConfig(terms=2, max_value=2, operators="+-", heldout_size=9)
    assert small.distinct_problems() == 3 * 3 * 2
    task = ArithmeticTask(small)
    seen = {task.train_item(i).prompt for i in range(400)} | {it.prompt for it in task.heldout()}
    assert len(seen) == 18  # the count is exact: every draw is one of them, and all of them turn up
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^task\.arithmetic\.heldout_size: must be <= 9, half the 18 distinct"):
        ArithmeticTask(dataclasses.replace(small, heldout_size=18))  # used to loop forever
    with pytest.raises(ConfigError, match=r"^task\.arithmetic\.heldout_size: must be <= 9"):
        load_config(None, ["task.arithmetic.terms=2", "task.arithmetic.max_value=2", "task.arithmetic.heldout_size=10"])
    assert time.perf_counter() - start < 1
    assert ArithmeticConfig(terms=64, max_value=2**62).distinct_problems() > 2**63  # huge, and quick


def test_an_unknown_reasoning_gym_generator_is_named_before_the_task_is_built():
    with pytest.raises(ConfigError, match=r"^task\.reasoning_gym\.name: unknown generator 'nope'; known: .* \(command"):
        load_config(None, ["task.name=reasoning_gym", "task.reasoning_gym.name=nope"])


def test_a_missing_model_folder_is_one_line_naming_the_field():
    for path in ("./nope/model", "runs/x/checkpoints/step_1"):
        with pytest.raises(ConfigError, match=rf"^model\.name_or_path: no folder {path} \(a hub id .*network\)"):
            load_config(None, [f"model.name_or_path={path}"])
        with pytest.raises(ValueError, match=rf"^model\.name_or_path: no folder {path} "):
            load_model_and_tokenizer(path)


def test_rm_train_settings_are_checked():
    with pytest.raises(SystemExit, match=r"^relayrl: error: kind: must be one of scalar, critic; got 'x' \(command"):
        main(["rm", "train", "kind=x"])
    with pytest.raises(SystemExit, match=r"train\.steps: must be > 0"):
        main(["rm", "train", "train.steps=0"])
    assert RMConfig().kind == "scalar"


def test_a_hub_id_that_cannot_be_fetched_is_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: fail at once, not retry
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^model\.name_or_path: cannot load nope/model \(hub ids need network\)"):
        load_model_and_tokenizer("nope/model")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["reward.judge_backend=vllm"], "reward.judge_backend"),  # it samples a judge model run in-process
        (
            ["generation.vllm_max_model_len=8192", "generation.vllm_max_num_batched_tokens=4096"],
            "generation.vllm_max_num",
        ),
        (  # REINFORCE++'s KL returns need a reward per sequence; spoc's are per message
            [
                "recipe=spoc",
                "algorithm.advantage=reinforce_pp",
                "algorithm.kl_coef=0.01",
                "algorithm.kl_in_reward=true",
            ],
            "algorithm.kl_in_reward",
        ),
    ],
)
def test_settings_that_cannot_work_together_are_named(overrides, named):
    with pytest.raises(ConfigError, match=rf"^{named}"):
        load_config(None, overrides)
