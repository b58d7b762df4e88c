"""DiffusER's greedy rule with at least one edit per step (`min_edits=1`) against enumeration of every tag
assignment of a toy row."""

from __future__ import annotations

import itertools

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import build_process
from textdiffusion.processes.alignment import Op
from textdiffusion.samplers.edit import EditConfig, at_least_one_edit, edit_sample


def brute_force(op_logp: torch.Tensor, ins_logp: torch.Tensor, n: int) -> tuple[list[int], list[int]]:
    """The most probable (ops of tokens 1..n, counts of gaps 0..n) with at least one edit."""
    best, arg = float("-inf"), None
    for ops in itertools.product(range(3), repeat=n):
        for counts in itertools.product(range(ins_logp.shape[-1]), repeat=n + 1):
            if all(o == Op.KEEP for o in ops) and not any(counts):
                continue
            score = sum(float(op_logp[p + 1, o]) for p, o in enumerate(ops))
            score += sum(float(ins_logp[p, c]) for p, c in enumerate(counts))
            if score > best:
                best, arg = score, (list(ops), list(counts))
    return arg


@pytest.mark.parametrize("seed", range(12))
def test_the_rule_is_the_best_assignment_with_an_edit(seed):
    gen = torch.Generator().manual_seed(seed)
    n, c = 3, 3
    def keep_wins(logits: torch.Tensor) -> torch.Tensor:  # KEEP (count 0) wins each position's argmax by a margin
        logits[:, 0] = logits[:, 1:].max(-1).values + torch.rand(len(logits), generator=gen)
        return torch.log_softmax(logits, -1)

    op_logp = keep_wins(torch.randn(n + 1, 3, generator=gen))
    ins_logp = keep_wins(torch.randn(n + 1, c, generator=gen))
    ops, counts = op_logp.argmax(-1), ins_logp.argmax(-1)
    ops[0] = Op.KEEP  # the start sentinel
    assert (ops[1:] == Op.KEEP).all() and (counts == 0).all()
    at_least_one_edit(op_logp, ins_logp, n, ops, counts)
    want_ops, want_counts = brute_force(op_logp, ins_logp, n)
    assert ops[1:].tolist() == want_ops and counts.tolist() == want_counts


def test_tags_that_already_edit_are_left_alone():
    op_logp = torch.log_softmax(torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0]]), -1)
    ins_logp = torch.log_softmax(torch.tensor([[5.0, 0], [5.0, 0], [5.0, 0]]), -1)
    ops, counts = torch.tensor([0, 1, 0]), torch.tensor([0, 0, 0])
    at_least_one_edit(op_logp, ins_logp, 2, ops, counts)
    assert ops.tolist() == [0, 1, 0] and counts.tolist() == [0, 0, 0]


def test_every_greedy_step_edits_and_the_rule_is_greedy_only():
    process = build_process("diffuser", vocab_size=5, mask_id=4, num_steps=2, max_insert=2)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=5, seq_len=12, d_model=16, n_heads=2, n_layers=1,
                                    **process.model_fields())).eval()
    out = edit_sample(model, process, torch.tensor([[0, 1, 2, 3, 0, 1]]),
                      EditConfig(steps=3, start="input", temperature=0.0, min_edits=1), record_frames=True)
    assert all(f.edits is not None and any(op != Op.KEEP for op, _ in f.edits[0]) for f in out.frames[1:])
    for bad in (EditConfig(temperature=1.0, min_edits=1), EditConfig(temperature=0.0, beam=2, min_edits=1),
                EditConfig(temperature=0.0, min_edits=2)):
        with pytest.raises(UserError, match="min_edits"):
            edit_sample(model, process, torch.tensor([[0, 1]]), bad)
