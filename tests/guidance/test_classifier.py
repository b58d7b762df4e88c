"""The learned attribute classifier: the verse/prose rule on known text, the classifier's save/load and input
kinds, and, on the exact toy of `gaussian_toy`, a classifier trained on noisy latents that learns its label and
whose guidance raises the share of samples with that label far above p_data's."""

from __future__ import annotations

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import ByteTokenizer
from textdiffusion.guidance import Attribute, AttributeClassifier, ClassifierConfig, Guidance, verse_or_prose
from textdiffusion.guidance.attributes import PROSE, VERSE, labelled_windows
from textdiffusion.guidance.classifier import masked_tokens, noisy_latents, train_classifier
from textdiffusion.samplers.gaussian import GaussianConfig, gaussian_sample

VERSE_TEXT = "ne\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\nThe slings"
PROSE_TEXT = "ar\nWhy, do not your courtier's hands sweat? and is not the\ngrease of a mutton as wholesome as the"


def test_the_verse_prose_rule_on_known_text():
    assert verse_or_prose(VERSE_TEXT) == VERSE and verse_or_prose(PROSE_TEXT) == PROSE
    # speaker names, stage directions and a single continuing line decide nothing
    assert verse_or_prose("x\nHAMLET.\nTo be, or not to be\n[Exit.]\n") is None
    assert verse_or_prose("x\nKing.\nI have nothing\nAnd more") is None
    ids, labels = labelled_windows([VERSE_TEXT + "\n\n" + PROSE_TEXT], ByteTokenizer(), 96)
    assert ids.shape == (2, 96) and labels.tolist() == [VERSE, PROSE]


@pytest.mark.parametrize("kind", ["latent", "tokens"])
def test_save_load_and_inputs(kind, tmp_path, gaussian_toy):
    cfg = ClassifierConfig(kind, vocab_size=6, mask_id=5, seq_len=4, embed_dim=3, d_model=16, n_layers=1, n_heads=2,
                           latent_dim=3, num_steps=10)
    torch.manual_seed(0)
    model = AttributeClassifier(cfg).eval()
    if kind == "latent":
        model.attach(gaussian_toy.toy_process(10), torch.randn(6, 3))
    loaded = AttributeClassifier.load(model.save(tmp_path / "cls"))
    t = torch.tensor([0.3, 0.9])
    x = torch.randn(2, 4, 3) if kind == "latent" else torch.tensor([[0, 5, 2, 1], [5, 5, 4, 3]])
    torch.testing.assert_close(loaded(x, t), model(x, t))
    if kind == "tokens":  # one-hot vectors are the same input as ids, and carry a gradient
        onehot = torch.nn.functional.one_hot(x, 6).float().requires_grad_(True)
        torch.testing.assert_close(model(onehot, t), model(x, t))
        model(onehot, t)[:, 1].sum().backward()
        assert onehot.grad is not None and float(onehot.grad.abs().sum()) > 0
        noisy, level = masked_tokens(5, x, torch.Generator().manual_seed(0))
        assert noisy.shape == x.shape and level.shape == (2,)
    with pytest.raises(UserError, match="no attribute classifier"):
        AttributeClassifier.load(tmp_path)
    with pytest.raises(UserError, match="kind"):
        ClassifierConfig("pixels", 6, 5, 4)
    with pytest.raises(UserError, match="latent_dim"):
        ClassifierConfig("latent", 6, 5, 4)
    with pytest.raises(UserError, match="labels"):
        Attribute(model, "sonnet", str, verse_or_prose)


def test_a_classifier_on_noisy_latents_learns_and_guides_the_exact_toy(gaussian_toy, tiny_exact):
    length, n = 3, 300
    data = tiny_exact.tiny_data(length)
    process = gaussian_toy.toy_process(200)
    labels = (data.seqs[:, 0] == 0).long()  # the attribute: the first token is 0
    prior = float(data.p_data[labels == 1].sum())
    cfg = ClassifierConfig("latent", vocab_size=4, mask_id=3, seq_len=length, embed_dim=8, d_model=32, n_layers=1,
                           n_heads=2, labels=("other", "zero-first"), latent_dim=3, num_steps=200)
    torch.manual_seed(0)
    table = gaussian_toy.toy_table()
    classifier = AttributeClassifier(cfg).attach(process, table)
    losses = []
    train_classifier(classifier, data.seqs, labels, lambda ids, gen: noisy_latents(process, table, ids, gen),
                     steps=150, batch_size=64, lr=3e-3, log=lambda step, loss: losses.append(loss))
    assert sum(losses[-20:]) < 0.8 * sum(losses[:20])  # high-noise levels keep it from 0
    with torch.no_grad():  # at low noise the label is plain: the classifier reads it
        x, _ = noisy_latents(process, table, data.seqs, torch.Generator().manual_seed(3))
        t = torch.zeros(len(data.seqs))
        assert float((classifier(table[data.seqs], t).argmax(-1) == labels).float().mean()) == 1.0
    control = Attribute(classifier, "zero-first", lambda ids: ",".join(map(str, ids)),
                        lambda text: int(text.split(",")[0] == "0"))
    model = gaussian_toy.ExactEmbeddingDenoiser(process, data.p_data, length)
    out = gaussian_sample(model, process, tiny_exact.masked_start(n, length), GaussianConfig(20, clamp=False,
                          guidance=Guidance([control], steps=3, lr=0.5)), generator=torch.Generator().manual_seed(0))
    rate = float(control.satisfied(out.ids).float().mean())
    assert out.nfe == 20  # the classifier reads the latents: no extra denoiser passes
    assert rate > min(0.95, prior + 0.4), (rate, prior)
