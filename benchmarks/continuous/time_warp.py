"""CDCD time warping against uniform t, same model, data and budget (issue 15.4).

python3 benchmarks/continuous/time_warp.py OUT_DIR [steps]
Two byte-level CDCD-style runs (`process.prediction=tokens process.objective=ce`), 2-layer d128, 16-wide
embeddings, batch 32 x 128: t uniform, and t from the time warp (`process.time_warp=true`). Printed: training
seconds, the bound on 128 validation windows (8 t-samples each, the bench's numbers) and the held-out
cross-entropy -log p(w_l | x_t) averaged over uniform t (what the warp reweights), and the warp's fitted law of t
(its quantiles), read from the trainer's process at the end.
"""
import json
import sys
import time
from pathlib import Path

import torch

from textdiffusion import Pipeline
from textdiffusion.train.config import load_config
from textdiffusion.train.trainer import Trainer, validation_chunks

out = Path(sys.argv[1])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 600
COMMON = ["data.tokenizer=byte", "data.seq_len=128", "model.d_model=128", "model.n_layers=2", "model.n_heads=4",
          "process.name=gaussian", "process.prediction=tokens", "process.objective=ce", "process.embed_dim=16",
          f"train.steps={steps}", "train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=50",
          "train.ema_decay=0.995", "run.log_every=50", f"run.eval_every={steps}", "run.save_every=200",
          "run.progress=false"]
rows = []
for name, extra in (("uniform", []), ("warp", ["process.time_warp=true"])):
    cfg = load_config(None, [*COMMON, *extra, f"run.out_dir={out / name}"])
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    warp = trainer.process.warp
    pipe = Pipeline.from_pretrained(out / name)
    val = validation_chunks(cfg, pipe.tokenizer, 128)
    lik = pipe.likelihood(val, t_samples=8, seed=0, batch_size=16)
    process, gen = pipe.process, torch.Generator().manual_seed(0)
    ce = []
    with torch.no_grad():  # held-out CE over uniform t: levels on a grid, one noise draw per window
        for level in range(50, process.num_steps + 1, 100):
            x0 = val[:64]
            noise = {"t": torch.full((len(x0),), level), "t_weight": torch.ones(len(x0), dtype=torch.float64),
                     "eps": torch.randn(*x0.shape, process.embed_dim, generator=gen),
                     "eps0": torch.randn(*x0.shape, process.embed_dim, generator=gen)}
            ce.append(float(process.terms(pipe.model, x0, noise)["ce"].mean()))
    row = {"run": name, "train_seconds": seconds, "bound": lik.nats_per_token, "bound_stderr": lik.stderr,
           "heldout_ce_uniform_t": sum(ce) / len(ce), "ce_by_level": [round(c, 3) for c in ce]}
    if warp is not None:
        cdf = warp.proposal().cumsum(0)
        row["warp_t_quantiles"] = {q: int(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64)))
                                   for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
        row["warp_bin_means"] = [round(m, 3) for m in warp.means.tolist()]
    rows.append(row)
    print(json.dumps(row), flush=True)
(out / "results.json").write_text(json.dumps(rows, indent=1))
