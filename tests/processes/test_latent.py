"""Latent diffusion (processes/latent.py): its bound on the Gaussian toy of `latent_toy` (tests/td_fixtures/latent.py),
where the exact denoiser is linear and the model's law p(z) is a known Gaussian, the parameterisations, the two
training stages, the autoencoder's masking and learning, and a trained run's folder.

The bound's expected value is computed here in closed form: for the toy denoiser zhat = m + c_t (x_t - sqrt(abar_t) m)
and x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps, E|z_i - zhat_i|^2 = (z_i - m_i)^2 (1 - c_t sqrt(abar_t))^2 +
c_t^2 (1 - abar_t), each level weighted by the KL of two Gaussians with the posterior's variance (a_t^2 / 2 v_t);
the prior and the last step are Gaussian KL / cross-entropy. The process's one-sample estimate must average to it,
and it must lie above -log p(z) of the toy's model law; the whole text bound, above -log p(w) computed by
Gauss-Hermite quadrature over p(z).
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import build_process, gaussian_math
from textdiffusion.processes.latent import LatentDiffusion, backbone
from textdiffusion.train.fsdp import checkpoint_blocks
from textdiffusion.train.trainer import Trainer


def exact_latent_bound(process: LatentDiffusion, z: torch.Tensor, m: torch.Tensor, s: float) -> torch.Tensor:
    """E over t and the noise of the bound on -log p(z), for the toy's exact denoiser; z [..., k, d] -> [...]."""
    abar, z, m = process.abar, z.double(), m.double()
    a_t = float(abar[-1])
    # KL(N(sqrt(a) z, 1 - a) || N(0, 1)) at the last level
    prior = 0.5 * ((1 - a_t) + a_t * z.pow(2) - 1 - math.log(1 - a_t)).sum((-2, -1))
    diffusion = torch.zeros_like(prior)
    for t in range(1, process.num_steps + 1):
        at = float(abar[t])
        a, _, v = (float(q) for q in gaussian_math.posterior(abar, t - 1, t))
        c = math.sqrt(at) * s * s / (at * s * s + 1 - at)
        mse = ((z - m).pow(2) * (1 - c * math.sqrt(at)) ** 2 + c * c * (1 - at)).sum((-2, -1))
        diffusion = diffusion + a * a / (2 * v) * mse
    a0, n = float(abar[0]), z.shape[-1] * z.shape[-2]
    final = 0.5 * n * (math.log(2 * math.pi * (1 - a0) / a0) + 1)  # E[-log N(z; x_0 / sqrt(a0), (1 - a0) / a0)]
    return prior + diffusion + final


def gaussian_nll(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (0.5 * torch.log(2 * math.pi * var) + (z.double() - mean) ** 2 / (2 * var)).sum((-2, -1))


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_each_parameterisation_inverts_its_target(prediction, latent_toy):
    process = latent_toy.toy_process(3, 4, prediction, big_t=50)
    z, eps = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    t = torch.tensor([1, 10, 25, 40, 50])
    xt = process.corrupt(z, t, eps)
    torch.testing.assert_close(process.to_clean(process.target(z, eps, t), xt, t), z, atol=2e-4, rtol=1e-4)


def test_the_latent_bound_is_unbiased_and_lies_above_the_toy_law(latent_toy):
    torch.manual_seed(0)
    k, d, s = 2, 3, 0.7
    process = latent_toy.toy_process(k, d, "v", big_t=20)
    m = torch.randn(k, d)
    model = latent_toy.GaussianToyDenoiser(process, m, m, s)
    mean, var = latent_toy.model_law(process, m, s)
    for z in (m + s * torch.randn(k, d), m + 3 * s * torch.ones(k, d)):  # a typical latent and an unlikely one
        exact = float(exact_latent_bound(process, z, m, s))
        assert exact >= float(gaussian_nll(z, mean, var)) - 1e-9
        n = 20_000
        noise = process.sample_noise(torch.zeros(n, 4, dtype=torch.long), torch.Generator().manual_seed(1))
        with torch.no_grad():
            draws = process.diffusion_terms(lambda xt, t: process.predict(model, xt, t), z.expand(n, k, d), noise)
        draws = draws.double()
        error = abs(float(draws.mean()) - exact)
        assert error < 5 * float(draws.std()) / math.sqrt(n), (float(draws.mean()), exact)


def test_the_text_bound_lies_above_the_exact_log_likelihood_and_is_unbiased(latent_toy):
    """k = 1 latent of width 2 and a random decoder: p(w) = E_{z ~ p(z)} p_dec(w | z), by 40 x 40 Gauss-Hermite
    nodes over the toy's Gaussian p(z); the bound's expectation by the same nodes over q(z | w) = N(mu(w), sigma^2)
    (exact for the diffusion part, which is quadratic in z), minus the entropy of q."""
    torch.manual_seed(0)
    s, sigma = 0.8, 0.5
    process = latent_toy.toy_process(1, 2, "x0", big_t=20, vocab=4, latent_noise=sigma)
    m = torch.tensor([[0.3, -0.2]])
    model = latent_toy.GaussianToyDenoiser(process, m, m, s).eval()
    w = torch.tensor([[0, 2, 1]])
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    grid = torch.tensor(np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 1, 2))
    gw = torch.tensor(np.outer(weights, weights).reshape(-1)) / (2 * math.pi)

    def decoder_nll(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model.decode_logits(w.expand(z.shape[0], -1), z.float()).double()
        return -logits.log_softmax(-1).gather(-1, w.expand(z.shape[0], -1)[..., None]).squeeze(-1).sum(1)

    mean, var = latent_toy.model_law(process, m, s)
    nll = -math.log(float((gw * torch.exp(-decoder_nll(mean + var.sqrt() * grid))).sum()))
    with torch.no_grad():
        mu = model.encode(w).double()
    q_nodes = mu + sigma * grid
    entropy = math.log(2 * math.pi * math.e * sigma ** 2)  # two coordinates
    expected = float((gw * (decoder_nll(q_nodes) + exact_latent_bound(process, q_nodes, m, s))).sum()) - entropy
    assert expected >= nll
    n = 4000
    x0 = w.expand(n, -1)
    with torch.no_grad():
        draws = process.nelbo_per_sequence(model, x0, process.sample_noise(x0, torch.Generator().manual_seed(3)))
    draws = draws.double()
    assert abs(float(draws.mean()) - expected) < 5 * float(draws.std()) / math.sqrt(n), (float(draws.mean()), expected)


def test_encoding_a_prefix_reads_only_the_prefix(latent_toy):
    torch.manual_seed(0)
    process = latent_toy.toy_process(3, 4)
    net = process.build_network(latent_toy.tiny_cfg())
    x = torch.randint(0, 5, (3, 8))
    lengths = torch.tensor([2, 5, 0])
    latents, has = process.prefix_latents(net, x, lengths)
    assert has.tolist() == [True, True, False]
    for row, c in ((0, 2), (1, 5)):
        torch.testing.assert_close(latents[row], net.encode(x[row:row + 1, :c])[0], atol=1e-5, rtol=1e-5)
    # normalised: every latent vector has mean 0 and variance 1 over its d features
    torch.testing.assert_close(latents.mean(-1), torch.zeros(3, 3), atol=1e-5, rtol=0)


def test_the_autoencoder_learns_to_carry_the_text_in_its_latents(latent_toy):
    """Decoding a passage from its own latents must beat decoding it from another passage's: the gap is what the
    latents carry, zero for a decoder that ignores them."""
    torch.manual_seed(0)
    process = latent_toy.toy_process(2, 8, vocab=6, latent_noise=0.1, latent_dropout=0.1, ae_steps=10_000)
    net = process.build_network(ModelConfig(vocab_size=6, seq_len=8, d_model=32, n_layers=1, n_heads=2))
    corpus = torch.randint(0, 5, (16, 8), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def gap() -> float:
        with torch.no_grad():
            z = net.encode(corpus)
            own = process.reconstruction_nll(net, corpus, z).mean()
            other = process.reconstruction_nll(net, corpus, z.roll(1, dims=0)).mean()
        return float(other - own) / corpus.shape[1]

    before = gap()
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):  # the gap is about 1.7 nats per token by then (3.1 after 150)
        noise = process.train_noise(corpus, gen)
        assert process.stage(noise) == "autoencoder"
        out = process.loss(net, corpus, noise)
        opt.zero_grad()
        out.mean.backward()
        opt.step()
    after = gap()
    assert abs(before) < 0.05 and after > 0.5, (before, after)  # nats per token


def test_the_stages_switch_after_ae_steps_and_the_second_trains_only_the_denoiser(latent_toy):
    torch.manual_seed(0)
    process = latent_toy.toy_process(2, 4, ae_steps=2, self_condition=True)
    net = process.build_network(latent_toy.tiny_cfg())
    x0 = torch.randint(0, 5, (4, 8))
    stages = [process.stage(process.train_noise(x0)) for _ in range(3)]
    assert stages == ["autoencoder", "autoencoder", "diffusion"]
    resumed = latent_toy.toy_process(2, 4, ae_steps=2, self_condition=True)
    resumed.load_training_state(process.training_state())
    assert resumed.stage(resumed.train_noise(x0)) == "diffusion"
    encoder = [p for name, p in net.named_parameters() if name.startswith(("embed", "encoder", "decoder", "queries"))]
    denoiser = [p for name, p in net.named_parameters() if name.startswith(("denoiser", "noisy_in", "cond_in"))]
    process.loss(net, x0, process.train_noise(x0)).total.backward()
    assert all(p.grad is None for p in encoder) and any(p.grad is not None for p in denoiser)
    net.zero_grad(set_to_none=True)
    first = latent_toy.toy_process(2, 4, ae_steps=2)
    first.loss(net, x0, first.train_noise(x0)).total.backward()
    assert all(p.grad is None for p in denoiser) and any(p.grad is not None for p in encoder)


def test_bad_options_and_other_networks_are_refused_in_one_line(latent_toy):
    for bad, match in ((dict(prediction="z"), "unknown prediction"), (dict(num_latents=0), "num_latents"),
                       (dict(latent_dropout=1.0), "latent_dropout"), (dict(ae_steps=-1), "ae_steps"),
                       (dict(self_condition="yes"), "self_condition")):
        with pytest.raises(UserError, match=match):
            build_process("latent", vocab_size=6, mask_id=5, **bad)
    process = latent_toy.toy_process(2, 4)
    with pytest.raises(UserError, match="needs a latent model"):
        backbone(Transformer(ModelConfig(vocab_size=6, seq_len=8, d_model=16, n_layers=1, n_heads=2)))
    net = process.build_network(latent_toy.tiny_cfg())
    x0 = torch.randint(0, 5, (2, 8))
    with pytest.raises(UserError, match="no loss mask"):
        process.loss(net, x0, process.train_noise(x0), loss_mask=torch.ones_like(x0, dtype=torch.bool))
    assert not latent_toy.toy_process(2, 4, latent_noise=0.0).bound  # no density q(z | w): score refuses


def test_a_trained_run_round_trips_through_its_folder(tmp_path, tiny_config, write_corpus):
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=40)
    cfg = tiny_config(tmp_path / "run", corpus, "process.name=latent", "process.ae_steps=1", "process.num_steps=50",
                      "process.num_latents=4", "process.latent_dim=8", "model.d_model=32", "model.n_layers=1")
    trainer = Trainer(cfg)
    for _ in range(2):
        trainer.train_step()
    trainer.save()
    pipe = Pipeline.from_pretrained(tmp_path / "run" / "checkpoint", device="cpu", use_ema=False)
    assert pipe.process.config() == trainer.process.config() and pipe.process.name == "latent"
    saved, loaded = trainer.model.state_dict(), pipe.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[key], loaded[key]) for key in saved)
    out = pipe.generate(num_samples=2, length=12, prompt="To be", seed=0, steps=3)
    assert all(text.startswith("To be") for text in out.texts)
    assert math.isfinite(pipe.score("To be, or not to be")[0].nats_per_token)
    assert Trainer(cfg, resume=True).process.batches_drawn == 2  # the stage counter resumes with the run
    copy_dir = pipe.save_pretrained(tmp_path / "copy")  # a model its family builds saves like the Transformer
    again = Pipeline.from_pretrained(copy_dir, device="cpu").model.state_dict()
    assert again.keys() == loaded.keys() and all(torch.equal(again[key], loaded[key]) for key in loaded)
    with pytest.raises(UserError, match="format='hf'.*save it with the default format"):
        pipe.save_pretrained(tmp_path / "hf", format="hf")


@pytest.mark.parametrize("ae_steps", [1, 0], ids=["autoencoder", "diffusion"])
def test_activation_checkpointing_leaves_the_gradients_as_they_were(ae_steps, latent_toy):
    torch.manual_seed(0)
    process = latent_toy.toy_process(2, 4, ae_steps=ae_steps)
    plain = process.build_network(latent_toy.tiny_cfg())
    checkpointed = copy.deepcopy(plain)
    checkpoint_blocks(checkpointed)
    x0 = torch.randint(0, 5, (4, 8))
    noise = process.train_noise(x0, torch.Generator().manual_seed(0))
    for net in (plain, checkpointed):
        process.loss(net, x0, noise).total.backward()
    grads = [(a.grad, b.grad) for a, b in zip(plain.parameters(), checkpointed.parameters()) if a.grad is not None]
    assert grads and all(torch.allclose(a, b, atol=1e-6) for a, b in grads)
    # every block of the encoder, decoder and denoiser was wrapped (so the equality above is not vacuous)
    assert len(checkpointed.blocks) == 3 and all(isinstance(b.forward, functools.partial) for b in checkpointed.blocks)


def test_data_parallel_training_is_refused_in_one_line(latent_toy, free_port):
    if dist.is_initialized():
        pytest.skip("this process already has a process group")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        process = latent_toy.toy_process(2, 4)
        wrapped = DistributedDataParallel(process.build_network(latent_toy.tiny_cfg()))
        x0 = torch.randint(0, 5, (2, 8))
        with pytest.raises(UserError, match="train without torchrun"):
            process.loss(wrapped, x0, process.train_noise(x0))
    finally:
        dist.destroy_process_group()


def test_word_dropout_hides_the_tokens_the_decoder_reads_not_the_ones_it_predicts(latent_toy):
    torch.manual_seed(0)
    process = latent_toy.toy_process(2, 4, ae_steps=5, word_dropout=0.5, latent_noise=0.0, latent_dropout=0.0)
    net = process.build_network(latent_toy.tiny_cfg())
    x0 = torch.randint(0, 5, (3, 8))
    noise = process.train_noise(x0, torch.Generator().manual_seed(0))
    read = noise["read"]
    assert 0 < int((~read).sum()) < read.numel()
    inputs = torch.where(read, x0, 5)  # [MASK] = 5
    logits = net.decode_logits(inputs, net.encode(x0)).float()
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x0, reduction="sum")
    torch.testing.assert_close(process.loss(net, x0, noise).total, expected)
    assert process.config()["word_dropout"] == 0.5
