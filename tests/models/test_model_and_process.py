import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.models.transformer import apply_rotary, rotary_tables
from textdiffusion.processes import MaskedDiffusion, build_process
from textdiffusion.processes.masked import subs_log_probs
from textdiffusion.processes.schedules import SCHEDULES, get_schedule


def small(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=20, seq_len=16, d_model=32, n_layers=2, n_heads=2, **kw)).eval()


def test_causal_flag_controls_information_flow():
    ids = torch.randint(0, 20, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 20
    causal, bidir = small(causal=True), small(causal=False)
    with torch.no_grad():
        assert torch.allclose(causal(ids)[0, :7], causal(changed)[0, :7], atol=1e-6)
        assert not torch.allclose(causal(ids)[0, 7:], causal(changed)[0, 7:], atol=1e-4)
        assert not torch.allclose(bidir(ids)[0, :7], bidir(changed)[0, :7], atol=1e-4)


def test_rotary_scores_depend_only_on_relative_position():
    cos, sin = rotary_tables(32, 8, 10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q.view(1, 1, 1, 8).expand(1, 1, 32, 8), cos, sin)[0, 0, m]
        kn = apply_rotary(k.view(1, 1, 1, 8).expand(1, 1, 32, 8), cos, sin)[0, 0, n]
        return float(qm @ kn)

    assert score(3, 1) == pytest.approx(score(20, 18), abs=1e-5)
    assert score(7, 7) == pytest.approx(score(0, 0), abs=1e-5) == pytest.approx(float(q @ k), abs=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-4


def test_time_conditioning_starts_neutral_then_depends_on_t():
    model = small(time_conditioning=True)
    ids = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        assert torch.allclose(model(ids, torch.tensor([0.1, 0.1])), model(ids, torch.tensor([0.9, 0.9])))
        for block in model.blocks:
            block.modulation.weight.normal_(std=0.1)
        assert not torch.allclose(model(ids, torch.tensor([0.1, 0.1])), model(ids, torch.tensor([0.9, 0.9])))
    with pytest.raises(ValueError, match="pass t"):
        model(ids)


def test_sequence_longer_than_model_is_rejected():
    with pytest.raises(ValueError, match="longer than the model"):
        small()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_endpoints_and_derivative(name):
    s = get_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.alpha_prime(t), numeric, rtol=1e-5, atol=1e-8)
    assert float(s.alpha(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-3)
    assert float(s.alpha(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-6)
    assert (s.alpha(t)[1:] < s.alpha(t)[:-1]).all()
    assert (s.nelbo_weight(t) > 0).all()
    with pytest.raises(UserError):
        get_schedule("quadratic-ish")


def test_loglinear_weight_is_one_over_t():
    t = torch.tensor([0.1, 0.5, 1.0])
    assert torch.allclose(get_schedule("loglinear").nelbo_weight(t), 1 / t)


def test_corrupt_masks_the_expected_fraction():
    proc = MaskedDiffusion(vocab_size=20, mask_id=19, schedule="cosine")
    x0 = torch.randint(0, 19, (4, 5000))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    xt, masked = proc.corrupt(x0, t, torch.rand(x0.shape, generator=torch.Generator().manual_seed(0)))
    frac = masked.float().mean(1)
    assert torch.allclose(frac, 1 - proc.schedule.alpha(t), atol=0.02)
    assert torch.equal(xt[~masked], x0[~masked]) and (xt[masked] == 19).all()


def test_stratified_t_covers_each_stratum_once():
    proc = MaskedDiffusion(vocab_size=20, mask_id=19, t_min=0.0)
    t = proc.sample_t(8, "cpu", torch.Generator().manual_seed(0))
    assert sorted((t * 8).floor().long().tolist()) == list(range(8))


def test_subs_never_predicts_mask_and_carries_over_unmasked():
    logits = torch.randn(1, 3, 5)
    xt = torch.tensor([[2, 4, 1]])  # mask id 4 at position 1
    logp = subs_log_probs(logits, xt, mask_id=4)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 3))
    assert logp[0, 0, 2] == 0 and logp[0, 2, 1] == 0
    assert logp[0, 1, 4] == float("-inf")
    assert torch.allclose(logp[0, 1, :4].exp(), torch.softmax(logits[0, 1, :4], -1))


def test_loss_ignores_unmasked_positions_and_is_weighted():
    proc = MaskedDiffusion(vocab_size=6, mask_id=5)
    model = small()
    model.head = torch.nn.Linear(32, 6, bias=False)
    model.embed = torch.nn.Embedding(6, 32)
    x0 = torch.randint(0, 5, (3, 10))
    noise = proc.sample_noise(x0, torch.Generator().manual_seed(1))
    noise["u"][:, :5] = 0.0  # never masked (u < alpha)
    per_seq = proc.nelbo_per_sequence(model, x0, noise)
    logits = model(proc.corrupt(x0, noise["t"], noise["u"])[0], noise["t"]).float()
    logits[..., 5] = float("-inf")
    nll = -torch.log_softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
    masked = noise["u"] >= proc.schedule.alpha(noise["t"])[:, None]
    expect = (nll * masked).sum(1) / noise["t"]
    assert torch.allclose(per_seq, expect, rtol=1e-5)
    out = proc.loss(model, x0, noise)
    assert out.n_tokens == 30 and torch.allclose(out.mean, expect.sum() / 30, rtol=1e-5)


def test_registry_builds_by_name_and_rejects_unknown():
    proc = build_process("masked", vocab_size=10, mask_id=9, schedule="cosine", unrelated_option=3)
    assert isinstance(proc, MaskedDiffusion) and proc.schedule.name == "cosine"
    with pytest.raises(UserError, match="unknown process"):
        build_process("nope", vocab_size=10, mask_id=9)
