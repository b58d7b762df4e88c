"""Versioned training-recipe defaults: what a run trains with for the options its config leaves unset.

A process class's own defaults are its paper's objective as written (MDLM's and BD3-LM's NELBO), and a saved
model's config.json records every option that differs from them, so loading never depends on this module.
A *training* config adds `process.recipe`: the defaults a run gets on top of the class's. It is saved with
the run, so a resumed run keeps the objective it started with even after the latest recipe changes; a config
saved before recipes existed lacks the key and is recipe 1 (`LEGACY_DEFAULTS` in config.py).

- recipe 1: the papers' objectives, nothing added (every run trained before 2026-11-27).
- recipe 2 (2026-11-27, issue 17): the absorbing families that train a 1/t-weighted bound -- MDLM
  (process.name=masked), BD3-LM (block) and SEDD on the absorbing graph -- add `CE_LAMBDA` times the flat
  cross-entropy of the masked tokens, the term D3PM's hybrid loss carries with weight T x lambda = 1,000 x 0.01
  (processes/d3pm.py). At the `small` budget it lowers MDLM's test NELBO by about 0.1 nats/byte, as much as
  D3PM-absorbing's lead over MDLM (BENCHMARKS.md, "Training-recipe ablation"). D3PM already has it;
  masked-spindle (a BERT start's schedule) and the non-absorbing families are unchanged.

The bound every run reports (`nelbo_per_sequence`: validation, `score`) is the same under every recipe.
"""

from __future__ import annotations

LATEST = 2
RECIPES = (1, 2)
CE_LAMBDA = 10.0  # recipe 2's weight of the flat cross-entropy term next to the bound


def recipe_defaults(recipe: int, process: str, options: dict) -> dict:
    """The options recipe `recipe` sets for `process` (before the user's own), given the config's options."""
    if recipe == 1:
        return {}
    if process in ("masked", "block") or (process == "sedd" and options.get("graph", "absorb") == "absorb"):
        return {"ce_lambda": CE_LAMBDA}
    return {}


def describe(recipe: int, process) -> str | None:
    """One line for the training log: what the loss is, for the processes the recipes concern (else None)."""
    if not hasattr(process, "ce_lambda"):
        return None
    weighting = getattr(process, "loss_weighting", "elbo")
    parts = ["the bound" if weighting == "elbo" else "the flat-weighted cross-entropy"]
    if process.ce_lambda:
        parts.append(f"{process.ce_lambda:g} x the masked tokens' cross-entropy")
    plain = weighting == "elbo" and not process.ce_lambda
    note = "" if plain else " (so the logged loss is not a bound; val_nelbo is)"
    return f"objective: {process.name}, recipe {recipe}: {' + '.join(parts)}{note}"
