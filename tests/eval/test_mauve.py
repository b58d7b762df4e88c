"""MAUVE (eval/mauve.py) on cases whose answer is known: equal, disjoint and mixed distributions."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.eval.mauve import (
    byte_histogram_features,
    divergence_frontier,
    frontier_area,
    mauve,
    mauve_from_features,
)


def blobs(n: int, centre: float, seed: int) -> torch.Tensor:
    """n points around four modes in 8 dimensions, shifted by `centre` along every axis."""
    gen = torch.Generator().manual_seed(seed)
    modes = torch.eye(8)[:4] * 3 + centre
    return modes[torch.randint(4, (n,), generator=gen)] + 0.3 * torch.randn(n, 8, generator=gen)


def test_equal_histograms_give_one_and_disjoint_ones_almost_zero():
    p = torch.tensor([0.2, 0.3, 0.5])
    assert frontier_area(divergence_frontier(p, p)) == pytest.approx(1.0, abs=1e-9)
    disjoint = frontier_area(divergence_frontier(torch.tensor([0.5, 0.5, 0, 0]), torch.tensor([0, 0, 0.5, 0.5])))
    # KL(P || wP + (1-w)Q) = -log w: the curve is ((1-w)^5, w^5), whose area is 1/252 (a Beta integral)
    assert disjoint == pytest.approx(1 / 252, abs=2e-3)


def test_identical_and_disjoint_feature_sets():
    x = blobs(100, 0.0, seed=0)
    same = mauve_from_features(x, x.clone())
    assert same.mauve == pytest.approx(1.0, abs=1e-9) and same.clusters == 10
    far = mauve_from_features(x, blobs(100, 50.0, seed=1))
    assert far.mauve < 0.01


def test_mauve_falls_as_more_of_q_comes_from_elsewhere():
    p = blobs(200, 0.0, seed=0)
    scores = []
    for k in (0, 50, 100, 150, 200):
        q = torch.cat([blobs(200 - k, 0.0, seed=2), blobs(k, 50.0, seed=3)])
        scores.append(mauve_from_features(p, q).mauve)
    assert scores[0] > 0.9 and scores[-1] < 0.01
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_texts_through_a_featurizer_and_bad_input():
    english = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(20)]
    digits = [f"{i * 7919:08d} {i * 104729:09d} 31415926" for i in range(20)]
    assert mauve(english, english[::-1], byte_histogram_features).mauve == pytest.approx(1.0, abs=1e-9)
    assert mauve(english, digits, byte_histogram_features).mauve < 0.05
    with pytest.raises(UserError, match="at least 2 texts"):
        mauve_from_features(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(UserError, match="equal width"):
        mauve_from_features(torch.zeros(3, 4), torch.zeros(3, 5))


def test_hf_judge_features_are_the_last_tokens_final_hidden_state(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from textdiffusion.eval.judge import HFJudge

    words = "<s> </s> the cat sat on mat a dog".split()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>").save_pretrained(
        tmp_path)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(words), n_positions=8, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=1)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path)
    judge = HFJudge(tmp_path)
    long = "the cat sat on the mat a dog sat on the cat"  # 12 tokens: only the last 8 (no start token) are read
    feats = judge.features(["the cat sat", long])
    with torch.no_grad():
        short = model(torch.tensor([[0, 2, 3, 4]]), output_hidden_states=True).hidden_states[-1][0, -1]
        tail = model(torch.tensor([judge.tokenize([long])[0][-8:]]), output_hidden_states=True).hidden_states[-1][0, -1]
    assert feats.shape == (2, 16)
    assert torch.allclose(feats[0], short.double(), atol=1e-6) and torch.allclose(feats[1], tail.double(), atol=1e-6)
