"""The sentence-concept networks (models/concept.py): what each prediction may read, and the decoder learning."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.models.concept import ConceptDenoiser, ConceptNetConfig, DecoderConfig, SentenceDecoder, decoder_loss


def tiny_denoiser(seed: int = 0) -> ConceptDenoiser:
    torch.manual_seed(seed)
    net = ConceptDenoiser(ConceptNetConfig(embed_dim=6, d_model=16, n_layers=2, denoiser_layers=2, n_heads=2,
                                           context=5))
    for block in net.blocks:  # adaLN-zero starts every block as the identity: give them weights to test
        torch.nn.init.normal_(block.modulation.weight, std=0.2)
    return net.eval()


def test_each_prediction_reads_only_the_sentences_before_it():
    net = tiny_denoiser()
    clean, xt, t = torch.randn(2, 5, 6), torch.randn(2, 5, 6), torch.rand(2, 5)
    base = net(clean, xt, t)
    for k in range(5):
        changed = clean.clone()
        changed[:, k] += 3.0
        out = net(changed, xt, t)
        # sentence j reads clean sentences < j: a change at k moves the predictions after k only
        assert torch.equal(out[:, : k + 1], base[:, : k + 1])
        if k < 4:
            assert (out[:, k + 1 :] - base[:, k + 1 :]).abs().amax() > 1e-4
    own = xt.clone()
    own[:, 2] += 1.0
    moved = (net(clean, own, t) - base).abs().amax(-1)
    assert moved[:, 2].min() > 1e-4 and moved[:, [0, 1, 3, 4]].max() == 0  # x_t of one sentence moves only its own
    later = t.clone()
    later[:, 3] = 1 - later[:, 3]
    assert (net(clean, xt, later) - base)[:, 3].abs().amax() > 1e-4  # the noise level is read


def test_a_dropped_context_is_the_null_vector():
    net = tiny_denoiser()
    xt, t = torch.randn(2, 4, 6), torch.rand(2, 4)
    drop = torch.tensor([[True, False, True, False], [True, True, True, True]])
    a = net(torch.randn(2, 4, 6), xt, t, drop)
    b = net(torch.randn(2, 4, 6), xt, t, drop)
    assert torch.equal(a[drop], b[drop]) and not torch.allclose(a[~drop], b[~drop])
    h = net.null.expand(2, 4, -1)
    assert torch.allclose(a[drop], net.denoise(h, xt, t)[drop], atol=1e-6)
    first = net(torch.randn(2, 4, 6), xt, t)[:, 0]  # the first sentence has no context but the learned start
    assert torch.allclose(first, net.denoise(net.context_states(torch.zeros(2, 0, 6))[:, 0], xt[:, 0], t[:, 0]),
                          atol=1e-6)


def test_a_context_longer_than_the_tower_is_refused():
    net = tiny_denoiser()
    with pytest.raises(UserError, match="context of 5 sentences"):
        net.context_states(torch.randn(1, 5, 6))


def tiny_decoder(seed: int = 0, n_layers: int = 2) -> SentenceDecoder:
    torch.manual_seed(seed)
    return SentenceDecoder(DecoderConfig(vocab_size=260, embed_dim=6, max_tokens=12, prefix=2, d_model=32,
                                         n_layers=n_layers, n_heads=2))


def test_decoder_position_i_reads_the_embedding_and_tokens_before_i():
    dec = tiny_decoder().eval()
    emb, ids = torch.randn(1, 6), torch.randint(0, 256, (1, 8))
    base = dec(emb, ids)
    assert base.shape == (1, 9, 260)
    for k in range(8):
        changed = ids.clone()
        changed[0, k] = (changed[0, k] + 1) % 256
        out = dec(emb, changed)
        assert torch.equal(out[:, : k + 1], base[:, : k + 1]) and (out[:, k + 1] - base[:, k + 1]).abs().max() > 0
    assert (dec(emb + 1, ids) - base)[:, 0].abs().max() > 0  # the first token is written from the embedding


def sentence_ids(sentences: list[str], tok: ByteTokenizer) -> torch.Tensor:
    rows = [tok.encode(s) + [tok.eos_id] for s in sentences]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])


def test_decoder_loss_counts_tokens_and_eos_but_not_padding():
    tok, dec = ByteTokenizer(), tiny_decoder().eval()
    ids, emb = sentence_ids(["abc", "de"], tok), torch.randn(2, 6)
    with torch.no_grad():
        nll, n = decoder_loss(dec, emb, ids, tok.pad_id)
        logp = torch.log_softmax(dec(emb, ids[:, :-1]).float(), -1)
    assert n == 4 + 3
    by_hand = -sum(float(logp[r, i, ids[r, i]]) for r in range(2) for i in range(ids.shape[1])
                   if ids[r, i] != tok.pad_id)
    assert float(nll) == pytest.approx(by_hand, rel=1e-5)


def test_decoder_learns_to_write_sentences_from_their_embeddings():
    tok, dec = ByteTokenizer(), tiny_decoder(n_layers=1)
    sentences = ["To be.", "Or not?", "Go!"]
    ids, emb = sentence_ids(sentences, tok), torch.eye(3, 6) * 3
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        nll, n = decoder_loss(dec, emb, ids, tok.pad_id)
        opt.zero_grad()
        (nll / n).backward()
        opt.step()
        losses.append(float(nll.detach() / n))
    assert losses[-1] < 0.05 * losses[0]
    written = dec.eval().generate(emb, tok.eos_id)
    assert [tok.decode(row) for row in written] == sentences  # greedy, stopped at [EOS], [EOS] left out
