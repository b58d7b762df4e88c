"""A 2-process DDP run of the Gaussian family matches the 1-process run: the process reads the token table
through the DDP wrapper, and the embeddings' gradients (used outside the wrapped forward) are averaged too."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("warp", [False, True], ids=["e2e", "cdcd_time_warp"])
def test_gaussian_ddp_matches_one_process(tmp_path, warp, ddp, ddp_worker, dist_vars, write_corpus):
    """With CDCD's time warp the processes fold every process's losses into one fit, so they draw alike."""
    corpus = write_corpus(tmp_path / "hamlet.jsonl")
    overrides = ["run.progress=false", f"data.source={corpus}", "data.val_fraction=0.1", "data.seq_len=32",
                 f"train.steps={ddp.STEPS}", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
                 "train.device=cpu", "model.dropout=0.0", "run.log_every=1", f"run.eval_every={ddp.STEPS}",
                 f"run.save_every={ddp.STEPS}", "run.sample_steps=4", "process.name=gaussian", "process.num_steps=100",
                 "process.embed_dim=8"]
    if warp:  # 4 levels, one bin each: all are seen in the first step, so the later draws are warped
        overrides += ["process.prediction=tokens", "process.objective=ce", "process.time_warp=true",
                      "process.num_steps=4", "model.time_conditioning=true"]
    with pytest.MonkeyPatch.context() as mp:
        for var in dist_vars:
            mp.delenv(var, raising=False)
        assert ddp_worker.train(tmp_path / "single", overrides) == 0
    ddp.torchrun(2, tmp_path / "ddp", overrides)
    ddp.assert_same_training(tmp_path / "single", tmp_path / "ddp", 2, "gaussian")
