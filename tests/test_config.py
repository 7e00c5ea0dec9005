import pytest

from relayrl.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["stepz=3"], "stepz"),
        (["steps=abc"], "steps"),
        (["algorithm.loss=foo"], "algorithm.loss"),
        (["optim.lr=-1"], "optim.lr"),
        (["rollout.top_p=1.5"], "rollout.top_p"),
        (["rollout.samples_per_prompt=1"], "rollout.samples_per_prompt"),
        (["task.arithmetic.nope=1"], "task.arithmetic.nope"),
        (["mode=turbo"], "mode"),
    ],
)
def test_bad_values_are_named(overrides, named):
    with pytest.raises(ConfigError, match=rf"^{named}: "):
        load_config(None, overrides)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nalgorithm:\n  loss: ppo\n")
    cfg = load_config(str(path), ["algorithm.clip_eps=0.1"])
    assert (cfg.steps, cfg.algorithm.loss, cfg.algorithm.clip_eps) == (7, "ppo", 0.1)


def test_bad_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"^rollout.temprature: "):
        load_config(str(path))
