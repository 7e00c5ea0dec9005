"""GGUF import, on a tiny random Llama written to a real GGUF file here, the way llama.cpp's converter writes one."""

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from relayrl import model_import
from relayrl.cli import main
from relayrl.model_import import KnownModel, ModelImportError, import_gguf, import_known
from relayrl.models import load_model_and_tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i s"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = "<|im_start|>user\nthe sum is 12+34?<|im_end|>\n"


def _tokens() -> list[str]:
    """Byte-level BPE: control tokens, every byte, then what the merges make."""
    return SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]


def _llama_permute(w: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows, which transformers' GGUF loader undoes."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape).numpy()


def _write_gguf(model: LlamaForCausalLM, path: Path) -> None:
    cfg = model.config
    tokens = _tokens()
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("relayrl tiny test llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied to the embeddings: a GGUF without output.weight says so
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = f"{names.get_name(base)}.{suffix}"
        if name.endswith("attn_q.weight"):
            data = _llama_permute(tensor, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            data = _llama_permute(tensor, cfg.num_key_value_heads)
        else:
            data = tensor.numpy()
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    """A GGUF file and the HF model it was written from."""
    config = LlamaConfig(
        vocab_size=len(_tokens()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # large random weights, so that a wrong layout shows in the logits
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    _write_gguf(model, path)
    return path, model


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory) -> Path:
    return import_gguf(source[0], tmp_path_factory.mktemp("imported") / "tiny")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_import_matches_the_gguf_and_loads_in_relayrl(source, imported):
    gguf_path, original = source
    model, tokenizer = load_model_and_tokenizer(str(imported))
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids[0, 0].item() == 1 and (ids == 2).sum() == 1  # control tokens stay whole, no BOS added
    assert torch.equal(ids, gguf_tokenizer(PROMPT, return_tensors="pt").input_ids)
    # exact: the GGUF holds the weights as float32 (q/k permuted and back: exact), so both models hold the same bits
    # in the same class, and run the same kernels in the same order in this process
    assert torch.equal(_logits(model, ids), _logits(gguf_model, ids))
    # the same bits again, but a config read back from GGUF: rms_norm_eps is float32's 1e-5 (2.5e-8 relative off),
    # which moves each normalisation by < 1e-12 relative. 1e-4 (1.2e-5 of the largest logit, 8.5) is what reordering
    # every sum (2 layers of dot products <= 128 long, 23 tokens) could move logits that size, worst case
    torch.testing.assert_close(_logits(model, ids), _logits(original, ids), rtol=0, atol=1e-4)
    assert model.config.tie_word_embeddings and not hasattr(model.config, "quantization_config")
    assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tokenizer.decode(prompt["input_ids"]).endswith("<|im_start|>assistant\n")

    marker = json.loads((imported / "relayrl_import.json").read_text())
    assert marker["source"]["sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert marker["source"]["size"] == gguf_path.stat().st_size
    assert marker["max_logit_diff"] == 0.0  # exact, as above: the GGUF-loaded and imported models hold the same bits
    assert {"config.json", "model.safetensors"} <= set(marker["files"])


def test_second_import_is_cached(source, imported):
    inode = imported.stat().st_ino
    start = time.perf_counter()
    assert import_gguf(source[0], imported) == imported
    assert time.perf_counter() - start < 5
    assert imported.stat().st_ino == inode  # a rebuild renames a new folder into place


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _other_source(folder: Path) -> None:
    marker = json.loads((folder / "relayrl_import.json").read_text())
    marker["source"]["sha256"] = "0" * 64
    (folder / "relayrl_import.json").write_text(json.dumps(marker))


@pytest.mark.parametrize(
    "corrupt",
    [
        _truncate_weights,
        lambda folder: (folder / "relayrl_import.json").unlink(),
        lambda folder: (folder / "tokenizer.json").unlink(),
        _other_source,
    ],
    ids=["truncated-weights", "no-marker", "missing-tokenizer", "other-source"],
)
def test_partial_or_stale_import_is_rebuilt(source, imported, tmp_path, corrupt):
    out = tmp_path / "tiny"
    shutil.copytree(imported, out)
    corrupt(out)
    inode = out.stat().st_ino
    assert import_gguf(source[0], out) == out
    assert out.stat().st_ino != inode
    assert (out / "model.safetensors").read_bytes() == (imported / "model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary folders left behind
    inode = out.stat().st_ino
    import_gguf(source[0], out)
    assert out.stat().st_ino == inode


def test_not_a_gguf_is_a_clear_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model")
    with pytest.raises(ModelImportError, match="not a GGUF file"):
        import_gguf(fake, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_check_writes_nothing(source, tmp_path, monkeypatch):
    monkeypatch.setattr(model_import, "LOGIT_TOLERANCE", 0.0)  # even an exact match now fails
    with pytest.raises(ModelImportError, match="logits differ"):
        import_gguf(source[0], tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_the_import_did_not_write_is_kept(source, tmp_path):
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ModelImportError, match="not written by an import"):
        import_gguf(source[0], out, check=False)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"] and (out / "notes.txt").read_text() == "mine"


def test_known_model_from_an_installed_package(source, tmp_path, monkeypatch):
    """The registry path, with the package already installed: found without importing it, and hash-checked."""
    site = tmp_path / "site"
    (site / "tiny_pkg").mkdir(parents=True)
    (site / "tiny_pkg" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    shutil.copy(source[0], site / "tiny_pkg" / "tiny.gguf")
    (site / "tiny_pkg-1.0.dist-info").mkdir()
    (site / "tiny_pkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-pkg\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(site))
    digest = hashlib.sha256(source[0].read_bytes()).hexdigest()
    known = KnownModel("tiny-pkg==1.0", "0" * 64, "tiny_pkg", "tiny.gguf", digest)
    tampered = dataclasses.replace(known, gguf_sha256="1" * 64)
    monkeypatch.setattr(model_import, "KNOWN_MODELS", {"tiny": known, "tampered": tampered})
    monkeypatch.setenv("RELAYRL_CACHE", str(tmp_path / "cache"))

    out = import_known("tiny")
    assert out == tmp_path / "cache" / "models" / "tiny"
    AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(ModelImportError, match="not the pinned"):
        import_known("tampered", tmp_path / "tampered")
    shutil.rmtree(site / "tiny_pkg")  # a valid cache needs no package: the pinned hash identifies the source
    assert import_known("tiny") == out
    with pytest.raises(ModelImportError, match="known models: tampered, tiny"):
        import_known("nope")


def test_cli_prints_the_folder_last(source, imported, tmp_path, capsys, monkeypatch):
    main(["models", "import", "--gguf", str(source[0]), "--output", str(imported)])
    assert capsys.readouterr().out.splitlines()[-1] == str(imported)
    monkeypatch.setenv("RELAYRL_CACHE", str(tmp_path))
    main(["models", "import", "--gguf", str(source[0]), "--name", "mine"])
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "models" / "mine")
    with pytest.raises(SystemExit, match="relayrl: error: unknown model 'nope'; known models: smollm2-135m-instruct"):
        main(["models", "import", "nope"])


def test_imported_model_generates_trains_one_rl_step_and_reloads(imported, tmp_path):
    """The path a real GGUF model takes: chat prompts, sampling, one RL step, an HF checkpoint."""
    from relayrl.config import load_config
    from relayrl.controller import train
    from relayrl.tracking import read_jsonl

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"the sum {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(8)))
    overrides = {
        "model.name_or_path": imported,
        "task.name": "dataset",
        "task.dataset.path": data,
        "task.dataset.chat": True,
        "task.dataset.heldout_fraction": 0.25,
        "sft.steps": 1,
        "sft.batch_size": 2,
        "steps": 1,
        "mode": "sync",
        "rollout.prompts_per_step": 2,
        "rollout.samples_per_prompt": 2,
        "rollout.max_new_tokens": 6,
        "threads.generator": 1,
        "threads.trainer": 1,
        "run_dir": tmp_path / "runs",
    }
    run_dir = train(load_config(None, [f"{k}={v}" for k, v in overrides.items()]), show_progress=False)
    (record,) = read_jsonl(run_dir / "metrics.jsonl")
    assert record["trained_tokens"] > 0 and np.isfinite(record["loss"]) and record["completion_length"] > 0
    reloaded = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "step_000001")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "checkpoints" / "step_000001")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "the sum 3+1?"}], add_generation_prompt=True)[
        "input_ids"
    ]
    out = reloaded.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(ids)
