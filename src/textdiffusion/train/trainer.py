"""The training loop: one code path for 1 process or N under torchrun (DDP).

Every rank draws the same global batch and the same noise (data cursor and generator are
shared), then takes its own slice, so a 2-process run takes the same steps as a 1-process run
with the same global batch (with dropout 0: dropout masks come from each process's own RNG).
Checkpoints hold everything needed to resume exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from pathlib import Path

import torch

from ..core.budget import check_memory
from ..core.errors import UserError
from ..core.precision import resolve_precision
from ..core.progress import progress_bar
from ..models import Transformer
from ..models.transformer import weight_bytes
from ..processes import build_process
from ..processes.likelihood import nelbo
from . import checkpoint as ckpt, fsdp, sft, sharded_checkpoint
from .config import Config
from .distributed import all_reduce_sum, barrier, cleanup, init_distributed
from .optim import EMA, build_optimizer, lr_at
from .recipes import describe as describe_objective

# the run's ingredients; re-exported here, where callers have always found them
from .setup import (
    BPE_TRAIN_CHARS as BPE_TRAIN_CHARS,
    make_batches as make_batches,
    model_config as model_config,
    pick_device as pick_device,
    plan_data_split as plan_data_split,
    prepare_tokenizer as prepare_tokenizer,
    validation_chunks as validation_chunks,
)
from .spindle_fit import fit_spindle


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl row; inf for a line a kill cut short (it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def validation_line(row: dict, exact: bool) -> str:
    """One line for an evaluation's row: the NELBO (the NLL when exact) in nats and bits per token and its
    perplexity bound; an edit family's loss bounds no likelihood, so it is only the loss."""
    se = f" ± {row['val_stderr']:.4f}" if math.isfinite(row["val_stderr"]) else ""
    if "val_nelbo" not in row:
        return f"step {row['step']}: validation loss {row['val_loss']:.4f}{se} (not a likelihood bound)"
    name, rel = ("NLL", "=") if exact else ("NELBO", "<=")
    return (f"step {row['step']}: validation {name} {row['val_nelbo']:.4f}{se} nats/token, "
            f"{row['val_nelbo'] / math.log(2):.4f} bits/token, ppl {rel} {row['val_ppl_bound']:.2f} "
            f"({row['val_tokens']:,} tokens)")


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        cfg.validate()  # configs built in Python skip load_config: check them before any work too
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        self.info = init_distributed(self.device.type)
        if self.info.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
        self.out_dir = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoint"
        self._check_batch()
        self.precision = resolve_precision(cfg.train.precision, self.device)
        saved = (self.ckpt_dir, ckpt.old_copy(self.ckpt_dir))  # .old: a save killed between its renames
        if not resume and any((d / ckpt.CONFIG_FILE).is_file() for d in saved):
            raise UserError(f"{self.out_dir} already holds a checkpoint: pass --resume to continue it, "
                            "or choose another --out")
        torch.manual_seed(cfg.train.seed)
        self.split = plan_data_split(cfg)
        self.tok = prepare_tokenizer(cfg, self.out_dir, self.info, self.split)
        self.process = build_process(cfg.process.name, vocab_size=self.tok.vocab_size, mask_id=self.tok.mask_id,
                                     required=tuple(cfg.process.extra), **cfg.process.options())
        self.model_cfg, model = self.build_model()
        self.model = model.to(self.device)
        # FSDP shards it before the optimiser and EMA see its parameters
        self.model = fsdp.prepare_model(self.model, cfg.train, self.process.name, self.precision, self.device,
                                        self.info)
        t = cfg.train
        self.optimizer = build_optimizer(self.model, t.lr, t.weight_decay, (t.beta1, t.beta2))
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.batches = make_batches(cfg, self.tok, self.split, self.info)
        # a fixed number of validation chunks, whatever the process count or micro-batch
        val = validation_chunks(cfg, self.tok, cfg.run.eval_batches * t.batch_size, self.split)
        self.val, self.val_mask = val if isinstance(val, tuple) else (val, None)  # mask: SFT's replies
        if self.info.is_main:
            print(f"data: {self.split.describe(cfg.data.source)}", flush=True)
            objective = self.objective_line()
            if objective:
                print(objective, flush=True)
        self.noise_gen = torch.Generator().manual_seed(t.seed)
        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        if resume:
            self._load_state()
        self._trim_metrics()
        self.ddp = fsdp.data_parallel(self.model, t.parallel, self.info)  # DDP, or the FSDP-sharded model
        self.forward_model = torch.compile(self.ddp) if t.compile else self.ddp
        fit_spindle(self)  # masked-spindle: its schedule from the training corpus's token counts (no-op otherwise)

    # ---- set-up helpers -------------------------------------------------------------------

    def objective_line(self) -> str | None:
        """What the loss is, for the training log (None where the process has nothing to say)."""
        return describe_objective(self.cfg.process.recipe, self.process)

    def build_model(self) -> tuple:
        """(model config, backbone); a hook for runs that start from another network (train/adapt_llama.py)."""
        model_cfg = model_config(self.cfg, self.tok, self.process)
        # weights, gradients and AdamW's two moments: four copies of the weights before any activation
        check_memory(f"training a model of d_model {model_cfg.d_model}, n_layers {model_cfg.n_layers} and vocab_size "
                     f"{model_cfg.vocab_size} (weights, gradients and AdamW moments)", 4 * weight_bytes(model_cfg),
                     "lower model.d_model or model.n_layers (or data.vocab_size, data.seq_len)", self.device)
        build = getattr(self.process, "build_network", None)  # a family with its own network (processes/latent.py)
        return model_cfg, Transformer(model_cfg) if build is None else build(model_cfg)

    def _check_batch(self) -> None:
        t, world = self.cfg.train, self.info.world_size
        if t.batch_size % world:
            raise UserError(f"train.batch_size {t.batch_size} does not split over {world} processes")
        local = t.batch_size // world
        self.micro_batch = t.micro_batch_size or local
        if local % self.micro_batch:
            raise UserError(f"per-process batch {local} is not a multiple of train.micro_batch_size "
                            f"{self.micro_batch}")

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- the loop -------------------------------------------------------------------------
    def train_step(self) -> float:
        t, info = self.cfg.train, self.info
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, t.lr, t.warmup_steps, t.steps, t.min_lr_ratio)
        x_global = self.batches.next_global()
        x_global, reply_global = x_global if isinstance(x_global, tuple) else (x_global, None)  # SFT rows
        noise_global = self.process.train_noise(x_global, self.noise_gen)
        local = t.batch_size // info.world_size
        rows = slice(info.rank * local, (info.rank + 1) * local)
        n_global_tokens = x_global.numel()
        # the loss is a per-token mean, or for SFT a per-row mean of reply-normalised losses (train/sft.py)
        n_global = n_global_tokens if reply_global is None else x_global.shape[0]
        total = torch.zeros((), dtype=torch.float64)
        n_micro = local // self.micro_batch
        for i in range(n_micro):
            part = slice(rows.start + i * self.micro_batch, rows.start + (i + 1) * self.micro_batch)
            x0 = x_global[part].to(self.device)
            noise = {k: v[part].to(self.device) for k, v in noise_global.items()}
            sync = i == n_micro - 1 or not info.enabled
            with (contextlib.nullcontext() if sync else fsdp.no_sync(self.ddp)), self._autocast():
                if reply_global is None:
                    out = self.process.loss(self.forward_model, x0, noise)
                else:
                    out = sft.sft_loss(self.process, self.forward_model, x0, noise, reply_global[part].to(self.device))
            # DDP averages gradients over ranks; scale so the result is the global per-token mean.
            (out.total * info.world_size / n_global).backward()
            total += out.total.detach().double().cpu()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.tokens_seen += n_global_tokens
        return float(all_reduce_sum(total, info) / n_global)

    def run(self) -> Path:
        r, info = self.cfg.run, self.info
        if self.step > self.cfg.train.steps:  # the schedule cannot run backwards (a loaded state may be inspected)
            raise UserError(f"{self.out_dir} is at step {self.step}, past train.steps={self.cfg.train.steps}: "
                            f"to train on, set train.steps above {self.step}")
        finished = self.step >= self.cfg.train.steps
        if finished and info.is_main:  # a resumed run that is done: say so
            print(f"{self.out_dir} already finished its train.steps={self.cfg.train.steps} steps: nothing to train "
                  f"(to train on, set train.steps above {self.step})", flush=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # a bar on a terminal, a line every few seconds in a log (core/progress.py); rank 0 only
        bar = progress_bar(bool(r.progress and info.is_main), desc="train", total=self.cfg.train.steps,
                           initial=self.step, unit="steps")
        window_start, window_tokens, postfix = time.perf_counter(), 0, {}
        try:
            while self.step < self.cfg.train.steps:
                start = time.perf_counter()
                loss = self.train_step()
                self.elapsed += time.perf_counter() - start
                window_tokens += self.cfg.train.batch_size * self.cfg.data.seq_len
                bar.update(1)
                last = self.step == self.cfg.train.steps
                if self.step % r.log_every == 0 or last:
                    rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    window_start, window_tokens = time.perf_counter(), 0
                    postfix.update(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
                    bar.set_postfix(postfix)
                    self._log({"step": self.step, "loss": loss, "tokens": self.tokens_seen,
                               "tokens_per_s": rate, "lr": self.optimizer.param_groups[0]["lr"],
                               "elapsed_s": self.elapsed})
                # past the last step the bar is full: it names what still runs (evaluation, save, sample)
                if r.eval_every and (self.step % r.eval_every == 0 or last):
                    bar.phase("final evaluation…" if last else "evaluating…")
                    row = self.evaluate()
                    bar.note(validation_line(row, self.process.exact_likelihood))
                    postfix["val"] = f"{row.get('val_nelbo', row.get('val_loss')):.4f}"
                    bar.set_postfix(postfix)
                if r.sample_every and self.step % r.sample_every == 0:
                    bar.phase("sampling…")
                    self.log_sample()
                if self.step % r.save_every == 0 or last:
                    bar.phase("saving…")
                    self.save()
                bar.phase(None)
            if not r.sample_every and not finished:
                bar.phase("final sample…")
                self.log_sample()
        finally:
            bar.close()
            cleanup(info)
        return self.ckpt_dir

    # ---- evaluation, samples, logs --------------------------------------------------------
    def inference_model(self) -> Transformer:
        """The EMA weights in a separate copy of the model (the raw weights when EMA is off)."""
        if fsdp.is_sharded(self.model):  # a collective: the copy gathers the shards whole
            return fsdp.inference_copy(self.model, None if self.ema is None else self.ema.shadow, self.device)
        model = copy.deepcopy(self.model)
        if self.ema is not None:
            model.load_state_dict({k: v.to(self.device) for k, v in self.ema.shadow.items()})
        return model.eval()

    def evaluate(self) -> dict:
        model = self.inference_model()
        with self._autocast():
            res = nelbo(model, self.process, self.val, t_samples=1, batch_size=self.micro_batch, seed=1234,
                        loss_mask=self.val_mask)
        if getattr(self.process, "bound", True):
            row = {"step": self.step, "val_nelbo": res.nats_per_token, "val_stderr": res.stderr,
                   "val_ppl_bound": res.perplexity, "val_tokens": res.n_tokens}
        else:  # a training loss that bounds no likelihood (edit families): no NELBO, no perplexity bound
            row = {"step": self.step, "val_loss": res.nats_per_token, "val_stderr": res.stderr,
                   "val_tokens": res.n_tokens}
        self._log(row)
        return row

    def log_sample(self) -> None:
        if not self.info.is_main:
            if fsdp.is_sharded(self.model):
                self.inference_model()  # gathering the shards takes every rank
            return
        from ..samplers import SAMPLERS

        config_cls, sample = SAMPLERS[self.process.default_sampler]
        sampler_cfg = config_cls()
        if hasattr(sampler_cfg, "steps"):
            sampler_cfg.steps = self.cfg.run.sample_steps
        model = self.inference_model()
        x = torch.full((1, self.cfg.data.seq_len), self.tok.mask_id, device=self.device)
        if self.val_mask is not None:  # SFT: answer the first validation prompt
            x = torch.where(self.val_mask[:1], x.cpu(), self.val[:1]).to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.step)
        with self._autocast():
            out = sample(self.process.denoiser(model), self.process, x, sampler_cfg, generator=gen)
        self._log({"step": self.step, "sample": self.tok.decode(out.ids[0].tolist())})

    def _trim_metrics(self) -> None:
        """Drop metrics rows past the checkpoint (all of them on a fresh start): a run killed between two
        saves logged steps that the resumed run will log again, and the curve must not hold them twice."""
        path = self.out_dir / "metrics.jsonl"
        if not self.info.is_main or not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_step(line) <= self.step]
        if len(kept) != len(lines):
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)

    def _log(self, row: dict) -> None:
        if not self.info.is_main:
            return
        with (self.out_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    # ---- checkpoints ----------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"model": self.model_cfg.to_dict(), "process": {"name": self.process.name, **self.process.config()},
                "tokenizer": self.tok.kind, "train_config": self.cfg.to_dict(),
                "trained": {"steps": self.step, "tokens_seen": self.tokens_seen, "train_seconds": self.elapsed,
                            "world_size": self.info.world_size, "device": self.device.type,
                            "precision": self.precision}}

    def save(self) -> None:
        if self.cfg.train.parallel == "fsdp":
            return sharded_checkpoint.save(self)  # every rank writes its shard
        data = self.batches.state_dict()  # on every rank: a sharded stream gathers each rank's position
        if not self.info.is_main:
            barrier(self.info)
            return
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                 "optimizer": self.optimizer.state_dict(), "data": data,
                 "noise_gen": self.noise_gen.get_state(), "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                 "ema": None if self.ema is None else {"decay": self.ema.decay, "updates": self.ema.updates},
                 "process": self.process.training_state()}

        def write(folder: Path) -> None:
            ckpt.write_config(folder, self.config_dict())
            ckpt.save_weights(self.model.state_dict(), folder / ckpt.WEIGHTS_FILE)
            if self.ema is not None:
                ckpt.save_weights(self.ema.shadow, folder / ckpt.EMA_FILE)
            self.tok.save(folder)
            sft.save_chat_template(self.cfg, folder)  # the tokenizer folder's template, if it has one
            ckpt.save_trainer_state(state, folder)

        ckpt.atomic_folder(self.ckpt_dir, write)
        barrier(self.info)

    def _load_state(self) -> None:
        if self.info.is_main:  # the one writer clears a killed save's leftovers (and puts .old back)
            ckpt.clean_interrupted_save(self.ckpt_dir)
        barrier(self.info)
        folder = self.ckpt_dir
        if not (folder / ckpt.CONFIG_FILE).is_file():
            raise UserError(f"nothing to resume in {self.out_dir}: no checkpoint there yet "
                            "(start the run without --resume)")
        saved = ckpt.read_config(folder)
        if saved["model"] != self.model_cfg.to_dict():
            raise UserError("the checkpoint's model shape differs from this config: resume with the "
                            "same model and data settings")
        state = ckpt.load_trainer_state(folder)
        if self.cfg.train.parallel == "fsdp" or sharded_checkpoint.is_sharded_checkpoint(folder):
            sharded_checkpoint.load(self, folder, state)  # any world size; refuses a ddp/fsdp mix-up
        else:
            self.model.load_state_dict(ckpt.load_weights(folder / ckpt.WEIGHTS_FILE))
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None and state["ema"] is not None:
                shadow = {k: v.to(self.device) for k, v in ckpt.load_weights(folder / ckpt.EMA_FILE).items()}
                self.ema.load_state_dict({**state["ema"], "shadow": shadow})
        self.batches.load_state_dict(state["data"])
        self.process.load_training_state(state.get("process") or {})  # e.g. CDCD's time-warp fit
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step, self.tokens_seen, self.elapsed = state["step"], state["tokens_seen"], state["elapsed"]


def train(cfg: Config, resume: bool = False) -> Path:
    return Trainer(cfg, resume).run()
