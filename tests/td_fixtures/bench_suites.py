"""Test-sized bench suites: byte level, a one-block d16 backbone, a few steps, two samples."""

from __future__ import annotations

from textdiffusion.bench import suites


def tiny_suite(name: str, description: str, families: tuple, steps: int) -> suites.Suite:
    """A suite of `families` that trains `steps` steps and evaluates and saves once, at the end."""
    return suites.Suite(
        name=name, description=description, tokenizations=(suites.BYTE,), families=families,
        base={"data": {"source": "shakespeare", "seq_len": 16, "val_fraction": 0.05},
              "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
              "train": {"steps": steps, "batch_size": 2, "warmup_steps": 1, "ema_decay": 0.0, "precision": "fp32"},
              "run": {"log_every": 1, "eval_every": steps, "eval_batches": 1, "save_every": steps,
                      "progress": False}},
        num_samples=2, sample_batch=2, single_samples=1, val_chunks=2, t_samples=1, infill_spans=(2,),
        infill_examples=2,
    )
