import torch

from relayrl.generation.chat import ChatModel
from relayrl.generation.sampler import SamplingConfig, encode_prompt, prompt_text, sample, sample_texts
from relayrl.models import TinySize, load_model_and_tokenizer


def _model(arch="tiny-llama"):
    model, tok = load_model_and_tokenizer(arch, TinySize(hidden=32, layers=2, heads=2), seed=0)
    return model.eval(), tok


def test_behaviour_logprobs_match_a_full_forward_pass():
    for arch in ("tiny-llama", "tiny-qwen2"):
        model, tok = _model(arch)
        # different lengths, each sampled twice: a repeated prompt is read once and its cache copied
        prompts = [encode_prompt(tok, "Q:1+2\nA:"), encode_prompt(tok, "Q:12+34-5\nA:")] * 2
        cfg = SamplingConfig(max_new_tokens=12, temperature=0.7)
        out = sample(model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
        for p, s in zip(prompts, out, strict=True):
            ids = torch.tensor([p + s.completion_ids])
            logits = model(ids).logits[0, len(p) - 1 : -1] / 0.7
            expected = logits.log_softmax(-1).gather(-1, ids[0, len(p) :, None]).squeeze(-1)
            # the sampler's cached decode sums in another order than this full forward: a log-prob (<= log 83 = 4.4
            # in size, the tiny vocabulary) moved by <= ~n * 2^-24 x 4.4, n ~ 2 layers x (128 + 32 + 24), the dot
            # products of the MLP, attention projections and attention over <= 24 positions: ~1e-4 worst case
            torch.testing.assert_close(expected, torch.tensor(s.logprobs), rtol=0, atol=1e-4)


def test_same_seed_same_samples_and_greedy_is_deterministic():
    model, tok = _model()
    prompts = [encode_prompt(tok, "Q:5-3\nA:")] * 4
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    a = sample(model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(3))
    b = sample(model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(3))
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    greedy = sample(model, prompts, SamplingConfig(10, temperature=0.0), tok.eos_token_id, tok.pad_token_id)
    assert len({tuple(s.completion_ids) for s in greedy}) == 1


def test_stop_strings_and_max_tokens():
    model, tok = _model()
    prompts = [encode_prompt(tok, "Q:5-3\nA:")] * 16
    out = sample(
        model,
        prompts,
        SamplingConfig(max_new_tokens=6, stop_strings=("1", "2")),
        tok.eos_token_id,
        tok.pad_token_id,
        torch.Generator().manual_seed(0),
        tok.decode,
    )
    for s in out:
        text = tok.decode(s.completion_ids)
        assert len(s.completion_ids) <= 6
        if s.finish_reason == "stop" and s.completion_ids[-1] != tok.eos_token_id:
            assert text.endswith(("1", "2")) and not any(c in text[:-1] for c in "12")
        if s.finish_reason == "length":
            assert len(s.completion_ids) == 6 and not any(c in text for c in "12")


def test_top_p_keeps_only_the_nucleus():
    from relayrl.generation.sampler import _top_p_filter

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = _top_p_filter(logits.clone(), 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 crosses it


def test_draws_follow_the_distribution():
    from relayrl.generation.sampler import _draw

    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).expand(20000, 4)
    counts = torch.bincount(_draw(probs, torch.Generator().manual_seed(0)), minlength=4) / 20000
    assert counts[3] == 0  # a filtered-out token is never drawn
    # statistical, not float: a frequency over 20000 draws has std <= sqrt(0.25 / 20000) = 0.0035; 0.015 is 4.2 std
    assert torch.allclose(counts[:3], torch.tensor([0.5, 0.3, 0.2]), atol=0.015)


def test_rows_that_finish_leave_the_batch_without_changing_the_others():
    model, tok = _model()
    prompts = [encode_prompt(tok, f"Q:{a}+{b}\nA:") for a in range(1, 5) for b in (2, 30, 400)]  # 12 rows
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.0, stop_strings=("1", "7"))
    gen = torch.Generator().manual_seed(0)
    out = sample(model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, gen, tok.decode)
    assert len({len(s.completion_ids) for s in out}) > 3  # rows finish at many different steps
    for p, s in zip(prompts, out, strict=True):  # each row's log-probabilities are its own full forward's
        ids = torch.tensor([p + s.completion_ids])
        expected = model(ids).logits[0, len(p) - 1 : -1].log_softmax(-1).gather(-1, ids[0, len(p) :, None])
        # as in test_behaviour_logprobs_match_a_full_forward_pass: ~1e-4 worst case for a reordered log-prob
        torch.testing.assert_close(expected.squeeze(-1), torch.tensor(s.logprobs), rtol=0, atol=1e-4)


def test_sample_texts_decodes_each_completion_and_counts_its_tokens():
    model, tok = _model()
    prompts = [encode_prompt(tok, "Q:1+2\nA:"), encode_prompt(tok, "Q:12+34-5\nA:")] * 2
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    samples = sample(model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(1))
    texts = sample_texts(model, tok, prompts, cfg, torch.Generator().manual_seed(1))
    for p, s, c in zip(prompts, samples, texts, strict=True):
        assert c.text == tok.decode(s.completion_ids, skip_special_tokens=True)
        assert (c.completion_ids, c.finish_reason) == (s.completion_ids, s.finish_reason)
        assert (c.prompt_tokens, c.total_tokens) == (len(p), len(p) + len(s.completion_ids))
    assert prompt_text(tok, "Q:1+2\nA:") == "Q:1+2\nA:"  # special tokens (BOS) dropped


def test_chat_model_replies_to_messages_with_a_seed():
    model, tok = _model()
    chat = ChatModel("tiny", model=model, tokenizer=tok)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q:1+2"}]
    ids = chat.prompt_ids(messages)
    assert tok.chat_template or ids == encode_prompt(tok, "Be brief.\nQ:1+2")  # no template: one line each
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0)
    reply = chat.reply(messages, cfg, seed=4)
    assert reply == sample_texts(model, tok, [ids], cfg, torch.Generator().manual_seed(4))[0]
    assert reply == chat.reply(messages, cfg, seed=4) and reply.prompt_tokens == len(ids)
