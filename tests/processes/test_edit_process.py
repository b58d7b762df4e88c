"""DiffusER's process: training targets rebuild x_{t-1}, the loss is exact on a model with known outputs, padding
does not leak into a row, and the sampler's frames replay by their own edits."""

from __future__ import annotations

import math
import random

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import build_process
from textdiffusion.processes.alignment import Op, apply_edits, from_tags
from textdiffusion.processes.edit import INSERT_SLOT, REPLACE_SLOT, _slot_targets, generator_row
from textdiffusion.samplers.edit import EditConfig, edit_sample

V, MASK = 12, 11


def make(seed: int = 0, **options):
    process = build_process("diffuser", vocab_size=V, mask_id=MASK, **options)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=V, seq_len=24, d_model=16, n_heads=2, n_layers=1,
                                    **process.model_fields())).eval()
    return process, model


def test_training_targets_rebuild_the_previous_step():
    process, _ = make(max_insert=40)  # no gap is clamped: the targets must be exact
    rng = random.Random(0)
    for _ in range(200):
        row = [rng.randrange(MASK) for _ in range(24)]
        t, seed = rng.randint(1, process.num_steps), rng.randrange(2**31)
        prev, xt, tags = process.example(row, t, seed)
        assert len(xt) <= 23 and len(prev) <= 23
        assert apply_edits(xt, from_tags(xt, tags)) == prev
        ids, marks = generator_row(xt, tags, process.sentinel)
        target = _slot_targets(xt, tags)
        assert target[1:] == prev  # the generator's canvas, slots filled, is [start] + x_{t-1}
        for q, (i, m, tok) in enumerate(zip(ids, marks, target)):
            if q and m not in (INSERT_SLOT, REPLACE_SLOT):
                assert i == tok  # KEEP positions already hold their token
            if m == REPLACE_SLOT:
                assert i != tok  # a REPLACE writes a different token


def test_loss_of_a_uniform_model_is_the_count_formula():
    """With every weight 0, every head is uniform: tags cost log 3 per token and log(K + 1) per gap, an inserted
    token log(V - 1) ([MASK] is never written), a replacing token log(V - 2) (nor the token it replaces)."""
    process, model = make(max_insert=5)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x0 = torch.randint(0, MASK, (6, 24), generator=torch.Generator().manual_seed(1))
    noise = process.sample_noise(x0, torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = process.nelbo_per_sequence(model, x0, noise)
    for b in range(6):
        _, xt, tags = process.example(x0[b].tolist(), int(noise["t"][b]), int(noise["seed"][b]))
        n, inserted = len(xt), sum(tags.insert_counts)
        replaced = sum(op == Op.REPLACE for op in tags.ops)
        want = n * math.log(3) + (n + 1) * math.log(6) + inserted * math.log(V - 1) + replaced * math.log(V - 2)
        assert float(got[b]) == pytest.approx(want, rel=1e-5)


def test_padding_does_not_change_a_rows_loss():
    process, model = make(seed=1)
    x0 = torch.randint(0, MASK, (5, 24), generator=torch.Generator().manual_seed(3))
    noise = process.sample_noise(x0, torch.Generator().manual_seed(4))
    lengths = {len(process.example(x0[b].tolist(), int(noise["t"][b]), int(noise["seed"][b]))[1]) for b in range(5)}
    assert len(lengths) > 1  # rows of different lengths share the padded batch
    with torch.no_grad():
        together = process.nelbo_per_sequence(model, x0, noise)
    for b in range(5):
        with torch.no_grad():
            alone = process.nelbo_per_sequence(model, x0[b : b + 1], {k: v[b : b + 1] for k, v in noise.items()})
        assert float(alone[0]) == pytest.approx(float(together[b]), rel=1e-5, abs=1e-5)


def test_loss_trains_both_heads():
    process, model = make()
    x0 = torch.randint(0, MASK, (4, 24))
    out = process.loss(model.train(), x0, process.sample_noise(x0, torch.Generator().manual_seed(0)))
    out.total.backward()
    assert torch.isfinite(out.total)
    assert model.tag_head.weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0
    assert model.mark_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("start", ["null", "random", "input"])
def test_sampler_frames_replay_by_their_edits(start):
    process, model = make(seed=2, max_insert=4)
    x = torch.tensor([[1, 2, MASK, 4, 5], [6, 7, 8, 9, 10]])
    gen = torch.Generator().manual_seed(0)
    out = edit_sample(model, process, x, EditConfig(steps=4, start=start), generator=gen, record_frames=True)
    assert out.nfe == 8 + (start == "input")  # two passes a step, plus one to fill the input's [MASK]
    assert [f.step for f in out.frames] == list(range(5))
    rows = [[[i for i in f.ids[b].tolist() if i != MASK] for b in range(2)] for f in out.frames]
    if start == "null":
        assert rows[0] == [[], []]
    if start == "input":
        assert rows[0][1] == [6, 7, 8, 9, 10] and rows[0][0][:2] == [1, 2] and len(rows[0][0]) == 5
    for k in range(1, 5):
        for b in range(2):
            assert apply_edits(rows[k - 1][b], out.frames[k].edits[b]) == rows[k][b]
            assert len(rows[k][b]) <= 23
    assert [i for i in out.ids[0].tolist() if i != MASK] == rows[-1][0]


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="summing to 1"):
        build_process("diffuser", vocab_size=V, mask_id=MASK, p_keep=0.5)
    with pytest.raises(UserError, match="p_insert must be below 1"):
        build_process("diffuser", vocab_size=V, mask_id=MASK, p_keep=0.0, p_replace=0.0, p_delete=0.0, p_insert=1.0)
    with pytest.raises(UserError, match="num_steps"):
        build_process("diffuser", vocab_size=V, mask_id=MASK, num_steps=0)
    process, model = make()
    with pytest.raises(UserError, match="start must be one of"):
        edit_sample(model, process, torch.tensor([[1]]), EditConfig(start="draft"))
    with pytest.raises(UserError, match="t_start must be in"):
        edit_sample(model, process, torch.tensor([[1]]), EditConfig(t_start=0.0))
    masked = build_process("masked", vocab_size=V, mask_id=MASK)
    with pytest.raises(UserError, match="sampler 'edit' runs edit models"):
        edit_sample(model, masked, torch.tensor([[1]]), EditConfig())


def test_time_conditioned_model_sees_each_revision_steps_noise_level():
    process = build_process("diffuser", vocab_size=V, mask_id=MASK, num_steps=8)
    model = Transformer(ModelConfig(vocab_size=V, seq_len=24, d_model=16, n_heads=2, n_layers=1,
                                    time_conditioning=True, **process.model_fields())).eval()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[1][0].item()))
    edit_sample(model, process, torch.tensor([[1, 2, 3]]), EditConfig(steps=4, t_start=0.5, start="input"))
    # t / T for the steps t = 8 * 0.5 * k / 4, k = 4..1, each read by the tagger and the generator
    assert seen == pytest.approx([0.5, 0.5, 0.375, 0.375, 0.25, 0.25, 0.125, 0.125])
