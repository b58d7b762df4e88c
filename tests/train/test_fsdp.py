"""FSDP2 (train.parallel=fsdp): 2 sharded processes train like 1 process, and a sharded checkpoint resumes on
another number of processes (1 -> 2 and 2 -> 1) exactly, up to float reduction order.

One torchrun covers it: the 1-process reference runs 6 steps here (snapshots at steps 2 and 4); 2 processes
(with activation checkpointing) resume its step-2 snapshot, train steps 3-4 and stop; 1 process resumes that
2-process checkpoint and trains steps 5-6. Everything must end where the 1-process reference does.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textdiffusion.core.errors import UserError
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.sharded_checkpoint import SHARDED_DIR, SafeReader

pytestmark = pytest.mark.slow

STEPS = 6
TOL = 1e-5


@pytest.fixture(scope="module")
def overrides(tmp_path_factory, write_corpus) -> list[str]:
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl")
    return ["run.progress=false", f"data.source={corpus}", "data.val_fraction=0.1", "data.seq_len=32",
            f"train.steps={STEPS}", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
            "train.device=cpu", "model.dropout=0.0", "run.log_every=1", "run.eval_every=2", "run.save_every=2",
            "run.sample_steps=2"]


@pytest.fixture(scope="module")
def torchrun(fsdp_worker, dist_vars, free_port, repo_root):
    """torchrun(nproc, args): fsdp_worker.py under torchrun."""

    def run(nproc: int, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in dist_vars}
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), fsdp_worker.__file__, *args]
        proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, \
            f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    return run


@pytest.fixture(scope="module")
def in_process(fsdp_worker, dist_vars):
    """in_process(out, overrides, *flags): fsdp_worker's training as one process, in this interpreter."""

    def run(out: Path, overrides: list[str], *flags: str) -> None:
        with pytest.MonkeyPatch.context() as mp:
            for var in dist_vars:
                mp.delenv(var, raising=False)
            snaps = tuple(int(f.split("=")[1]) for f in flags if f.startswith("--snapshot-at="))
            assert fsdp_worker.train(out, overrides, resume="--resume" in flags, snapshot_at=snaps) == 0

    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, overrides, in_process, torchrun) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsdp")
    single = root / "single"
    in_process(single, overrides, "--snapshot-at=2", "--snapshot-at=4")
    two = root / "two"
    shutil.copytree(root / "single_step2", two)
    torchrun(2, [str(two), *overrides, "train.activation_checkpointing=true", "--resume", "--stop-after=4"])
    back = root / "back"
    shutil.copytree(two, back)
    in_process(back, overrides, "--resume")
    return {"single": single, "step2": root / "single_step2", "step4": root / "single_step4", "two": two,
            "back": back}


@pytest.fixture(scope="module")
def compare(max_diff):
    """compare(ref, run) -> (weights, ema): the largest differences between two runs' checkpoints."""

    def weights_and_ema(ref: Path, run: Path) -> tuple[float, float]:
        def diff(name: str) -> float:
            return max_diff(load_file(ref / "checkpoint" / name), load_file(run / "checkpoint" / name))

        return diff(ckpt.WEIGHTS_FILE), diff(ckpt.EMA_FILE)

    return weights_and_ema


def test_two_sharded_processes_resume_a_one_process_checkpoint_and_train_like_it(runs, losses, compare):
    two = runs["two"]
    info = [json.loads((two / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["world_size"] for i in info] == [2, 2]
    assert all(i["local"] < i["total"] for i in info), "the parameters were not sharded"
    assert sum(i["local"] for i in info) >= info[0]["total"]
    assert len(list((two / "checkpoint" / SHARDED_DIR).glob("*.distcp"))) == 2, "each rank writes its shard"
    saved = json.loads((two / "checkpoint" / ckpt.CONFIG_FILE).read_text())["trained"]
    assert saved["world_size"] == 2 and saved["steps"] == 4
    weights, ema = compare(runs["step4"], two)
    ref, got = losses(runs["single"]), losses(two)
    loss = max(abs(ref[s] - got[s]) for s in (3, 4))
    print(f"1 -> 2 processes at step 2, to step 4: max |diff| weights {weights:.3g}, ema {ema:.3g}, losses {loss:.3g}")
    assert sorted(got) == [1, 2, 3, 4]
    assert weights <= TOL and ema <= TOL and loss <= TOL


def test_one_process_resumes_a_two_process_sharded_checkpoint_exactly(runs, losses, compare):
    back = runs["back"]
    weights, ema = compare(runs["single"], back)
    ref, got = losses(runs["single"]), losses(back)
    loss = max(abs(ref[s] - got[s]) for s in ref)
    print(f"2 -> 1 processes at step 4, to step 6: max |diff| weights {weights:.3g}, ema {ema:.3g}, losses {loss:.3g}")
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    assert weights <= TOL and ema <= TOL and loss <= TOL


def test_an_fsdp_run_folder_is_a_normal_model_folder(runs, max_diff):
    from textdiffusion.api.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(runs["two"], device="cpu")  # EMA weights, gathered whole by rank 0
    ema = load_file(runs["two"] / "checkpoint" / ckpt.EMA_FILE)
    assert max_diff({k: v for k, v in pipe.model.state_dict().items() if k in ema}, ema) == 0
    assert len(pipe.generate(1, steps=2, seed=0).texts) == 1


def test_ddp_and_fsdp_checkpoints_are_not_mixed_up(runs, overrides, tmp_path, fsdp_worker):
    run = tmp_path / "run"
    shutil.copytree(runs["step2"], run)
    with pytest.raises(UserError, match="saved by a train.parallel=fsdp run: resume it with train.parallel=fsdp"):
        fsdp_worker.train(run, [*overrides, "train.parallel=ddp"], resume=True)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > MARKER",))


def test_a_sharded_index_that_would_run_code_is_refused(runs, tmp_path):
    folder = tmp_path / SHARDED_DIR
    shutil.copytree(runs["single"] / "checkpoint" / SHARDED_DIR, folder)
    marker = tmp_path / "MARKER"
    (folder / ".metadata").write_bytes(pickle.dumps(_Boom()).replace(b"MARKER", str(marker).encode()))
    with pytest.raises(UserError, match="is not part of a checkpoint index"):
        SafeReader(folder).read_metadata()
    assert not marker.exists()
    assert SafeReader(runs["single"] / "checkpoint" / SHARDED_DIR).read_metadata().state_dict_metadata


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_checkpoint_with_non_tensor_entries_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.ones(2), "note": {"any": "object"}}, checkpoint_id=tmp_path, no_dist=True)
    with pytest.raises(UserError, match="corrupt or holds objects other than the index|non-tensor entries"):
        SafeReader(tmp_path).read_metadata()


def test_bf16_policy_computes_in_bf16_and_keeps_fp32_shards_and_gradients(tmp_path):
    """MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): the gathered weights a block computes with
    are bf16, the sharded master weights and their gradients fp32; activation checkpointing recomputes with them."""
    import torch.distributed as dist

    from textdiffusion.models import ModelConfig, Transformer
    from textdiffusion.train.fsdp import checkpoint_blocks, is_sharded, shard_model

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=16, seq_len=8, d_model=16, n_layers=2, n_heads=2))
        checkpoint_blocks(model)
        shard_model(model, "bf16", torch.device("cpu"), 1)
        assert is_sharded(model)
        seen = []
        model.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(m.mlp[0].weight.dtype))
        ids = torch.randint(0, 16, (2, 8))
        logits = model(ids)
        logits.float().logsumexp(-1).mean().backward()
        assert seen == [torch.bfloat16] and logits.dtype == torch.bfloat16
        for p in model.parameters():
            assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
    finally:
        dist.destroy_process_group()


def test_sharded_ema_is_the_ema_not_the_weights(runs, overrides, tmp_path, max_diff):
    """ema.safetensors of an FSDP run holds the trainer's EMA shadow: equal to a plain (unsharded) run's EMA for the
    same seed, and not the live weights."""
    from textdiffusion.train.config import load_config
    from textdiffusion.train.trainer import Trainer

    plain = Trainer(load_config("tiny", [f"run.out_dir={tmp_path / 'plain'}", *overrides]))
    plain.run()
    for name in ("single", "back"):
        folder = runs[name] / "checkpoint"
        ema, weights = load_file(folder / ckpt.EMA_FILE), load_file(folder / ckpt.WEIGHTS_FILE)
        assert max_diff(ema, load_file(tmp_path / "plain" / "checkpoint" / ckpt.EMA_FILE)) <= TOL
        assert max_diff(ema, {k: v.cpu() for k, v in plain.ema.shadow.items() if k in ema}) <= TOL
        assert max_diff(ema, weights) > 10 * TOL  # six steps with decay < 1: the average lags the weights
