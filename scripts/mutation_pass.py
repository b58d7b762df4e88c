"""A mutation pass: plant small, realistic bugs in the source one at a time and check that the tests fail.

Each mutant replaces one exact snippet of one file and names the test files that should catch it. The pass runs in
a private copy of the repository (the working tree is never touched), with that copy's src/ first on PYTHONPATH so
the tests import the mutated package, and prints a table: killed (some test failed), survived (all passed: a gap
in the tests, or an equivalent mutant, said in its note), or broken (the snippet is no longer in the file). A kill
counts only when pytest reports failed tests (exit 1) and the same tests pass on the unmutated copy: a collection
error or a missing fixture is reported as such, never as a kill.

usage:  python scripts/mutation_pass.py                 # every mutant
        python scripts/mutation_pass.py --only kv_cache  # mutants whose name contains the word
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "src/textdiffusion"


@dataclass
class Mutant:
    name: str
    file: str  # below src/textdiffusion/
    old: str
    new: str
    tests: tuple[str, ...]
    note: str = ""


MUTANTS = [
    # processes/
    Mutant("gaussian_level_0", "processes/gaussian.py", ".long().clamp(0, self.num_steps - 1) + 1",
           ".long().clamp(0, self.num_steps - 1)", ("tests/processes/test_silent_bugs.py",)),
    Mutant("gaussian_no_T", "processes/gaussian.py", "t = (u * self.num_steps).long()",
           "t = (u * (self.num_steps - 1)).long()", ("tests/processes/test_silent_bugs.py",)),
    Mutant("time_warp_decay_once", "processes/time_warp.py", "keep = self.decay ** count[hit].double()",
           "keep = self.decay + 0 * count[hit].double()", ("tests/processes/test_silent_bugs.py",)),
    Mutant("time_warp_first_visit", "processes/time_warp.py", "torch.where(fresh, batch_mean,",
           "torch.where(fresh & False, batch_mean,", ("tests/processes/test_silent_bugs.py",)),
    Mutant("diffuser_op_targets_shifted", "processes/edit.py", "op_target[b, 1 : 1 + len(xt)] = ",
           "op_target[b, 0 : len(xt)] = ", ("tests/processes/test_silent_bugs.py",)),
    Mutant("diffuser_scores_every_position", "processes/edit.py",
           "slots = gcan.valid & ((gcan.marks == INSERT_SLOT) | (gcan.marks == REPLACE_SLOT))",
           "slots = gcan.valid", ("tests/processes/test_silent_bugs.py",)),
    Mutant("complementary_same_draw", "processes/masked.py", "torch.cat([v, 1 - v])", "torch.cat([v, v])",
           ("tests/processes/test_complementary_masks.py",)),
    Mutant("masked_keeps_instead_of_masks", "processes/masked.py", "masked = u >= self.schedule.alpha(t)[:, None]",
           "masked = u < self.schedule.alpha(t)[:, None]", ("tests/samplers/test_mdlm_exact.py",)),
    Mutant("masked_reconstruction_weight", "processes/masked.py", "torch.full_like(weight, 1.0 / self.t_min)",
           "torch.full_like(weight, 1.0)",
           ("tests/processes/test_nelbo_bound.py", "tests/samplers/test_mdlm_exact.py")),
    Mutant("block_shift_first_token", "processes/block_shift.py", "return torch.where(first, clean, noisy), clean",
           "return noisy, clean", ("tests/train/test_adapt_block_shift.py",)),
    # samplers/
    Mutant("entropy_bound_no_freeze", "samplers/entropy_bound.py",
           "x[:, :end] = torch.where(done[:, None], x[:, :end], moved)", "x[:, :end] = moved",
           ("tests/samplers/test_entropy_bound_stop.py",)),
    Mutant("entropy_bound_stop_early", "samplers/entropy_bound.py", "if len(recent) < self.stability:",
           "if False:", ("tests/samplers/test_entropy_bound_stop.py",)),
    Mutant("dual_cache_drops_suffix", "samplers/unmasking.py",
           "idx = torch.cat([torch.arange(lo), torch.arange(hi, x.shape[1])]).to(x.device)",
           "idx = torch.arange(lo).to(x.device)", ("tests/samplers/test_parallel_decoding.py",)),
    Mutant("ar_sampler_start_not_forbidden", "samplers/autoregressive.py",
           "logits[:, process.start_id] = float(\"-inf\")", "pass", ("tests/interop/test_causal_lm.py",
                                                                    "tests/processes/test_autoregressive.py"),
           "a trained model rarely predicts [START]: may survive"),
    Mutant("gumbel_float32", "samplers/base.py", "u = torch.rand(shape, dtype=torch.float64",
           "u = torch.rand(shape, dtype=torch.float32",
           ("tests/samplers/test_categorical_draws.py",)),
    # models/ and interop/
    Mutant("kv_cache_skip_ignored", "models/kv_cache.py", "        if skip:", "        if False:",
           ("tests/interop/test_llama_cache.py", "tests/models/test_kv_cache.py")),
    Mutant("kv_cache_positions_not_kept", "models/kv_cache.py",
           "self.positions[:n] = self.positions[index].clone()", "pass", ("tests/models/test_kv_cache.py",)),
    Mutant("dream_shift_wrong_side", "interop/llama_like.py", "return logits[:, :-1]  # position p",
           "return logits[:, 1:]  # position p", ("tests/interop/test_llama_cache.py",)),
    Mutant("llama_causal_mask_off_by_one", "interop/llama_like.py",
           "attn_mask = positions[:, None] >= cache_positions", "attn_mask = positions[:, None] > cache_positions",
           ("tests/interop/test_llama_cache.py",)),
    Mutant("shifted_cache_forgets_start", "models/shifted.py",
           "self.inner.keep(torch.cat([index.new_zeros(1), index + 1]))", "self.inner.keep(index + 1)",
           ("tests/interop/test_llama_cache.py",)),
    Mutant("causal_lm_not_causal", "interop/causal_lm.py", "    cfg.causal = True", "    cfg.causal = False",
           ("tests/interop/test_causal_lm.py",)),
    Mutant("mask_row_not_start_copy", "interop/hf_causal.py", "grown[mask_id] = state[key][start_id]",
           "grown[mask_id] = 0", ("tests/interop/test_causal_lm.py", "tests/train/test_adapt_llama.py")),
    Mutant("llada_gqa_no_repeat", "interop/llama_like.py", "if groups > 1:", "if groups > 99:",
           ("tests/interop/test_llama_cache.py", "tests/interop/test_llada_dream.py")),
    # serve/
    Mutant("batcher_first_t_for_all", "serve/batcher.py", "torch.cat([c.t.reshape(-1).expand(len(c.ids))",
           "torch.cat([group[0].t.reshape(-1).expand(len(c.ids))", ("tests/serve/test_batcher_rows.py",)),
    Mutant("batcher_rows_reversed", "serve/batcher.py",
           "for call, part in zip(group, out.split([len(c.ids) for c in group])):",
           "for call, part in zip(reversed(group), out.split([len(c.ids) for c in reversed(group)])):",
           ("tests/serve/test_batcher_rows.py",)),
    Mutant("batcher_mixes_lengths", "serve/batcher.py", "return (self.ids.shape[1], self.t is None, self.ids.device)",
           "return (self.t is None, self.ids.device)", ("tests/serve/test_batcher_rows.py",)),
    # train/
    Mutant("ema_no_warm_start", "train/optim.py", "d = min(self.decay, (1 + self.updates) / (10 + self.updates))",
           "d = self.decay", ("tests/train/test_optim_schedule.py",)),
    Mutant("warmup_off_by_one", "train/optim.py", "return base_lr * (step + 1) / warmup",
           "return base_lr * step / warmup", ("tests/train/test_optim_schedule.py",)),
    Mutant("fsdp_saves_weights_as_ema", "train/sharded_checkpoint.py",
           "ema = full_state(trainer.ema.shadow) if", "ema = full_state(trainer.model.state_dict()) if",
           ("tests/train/test_fsdp.py",)),
    Mutant("llama_adapt_ar_not_causal", "train/adapt_llama.py", 'causal = self.cfg.process.name == "autoregressive"',
           "causal = False", ("tests/train/test_adapt_llama_block.py",)),
]


def run(mutant: Mutant, copy: Path, timeout: float) -> tuple[str, float]:
    path = copy / PKG / mutant.file
    original = path.read_text()
    if mutant.old not in original:
        return "broken", 0.0
    path.write_text(original.replace(mutant.old, mutant.new, 1))
    start = time.perf_counter()
    try:
        code = pytest_exit(copy, mutant.tests, timeout)
    finally:
        path.write_text(original)
    verdict = {0: "survived", 1: "killed", None: "killed (timeout)"}.get(code, f"error (pytest exit {code})")
    return verdict, time.perf_counter() - start


def pytest_exit(copy: Path, tests: tuple[str, ...], timeout: float) -> int | None:
    """pytest's exit code on `tests` in the copy (None: timed out); a missing test file is an error (exit 4)."""
    if any(not (copy / t).exists() for t in tests):
        return 4
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="run the mutants whose name contains this")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only is None or args.only in m.name]
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = Path(tmp) / "repo"
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for rel in files.splitlines():
            if (ROOT / rel).is_file():
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, copy / rel)
        baseline = {tests: pytest_exit(copy, tests, args.timeout) for tests in {m.tests for m in chosen}}
        rows = []
        for mutant in chosen:
            if baseline[mutant.tests] != 0:
                rows.append((mutant, f"unusable (tests fail unmutated: exit {baseline[mutant.tests]})", 0.0))
                print(f"{rows[-1][1]}  {mutant.name}", flush=True)
                continue
            verdict, seconds = run(mutant, copy, args.timeout)
            rows.append((mutant, verdict, seconds))
            print(f"{verdict:>16}  {seconds:6.1f} s  {mutant.name}  ({mutant.file})", flush=True)
    killed = sum(v.startswith("killed") for _, v, _ in rows)
    counted = sum(v.startswith(("killed", "survived")) for _, v, _ in rows)
    print(f"\nkilled {killed} of {counted} mutants ({100 * killed / max(counted, 1):.0f}%)")
    for mutant, verdict, _ in rows:
        if not verdict.startswith("killed"):
            print(f"  {verdict}: {mutant.name} {mutant.note}")


if __name__ == "__main__":
    main()
