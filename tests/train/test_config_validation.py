"""Every training config value is checked before any work starts (issue 20.3): a bad one is one line naming
the key, the value and the allowed range, and `textdiffusion train` exits 2 at once (data.seq_len=0 used to
hang while eating memory; train.lr=-1, train.batch_size=0 and model.n_heads=3 ended in tracebacks)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.processes import PROCESSES
from textdiffusion.train.config import Config, load_config, presets
from textdiffusion.train.trainer import Trainer

# (overrides, the key the message must name, a piece of the allowed range it must state)
BAD = [
    (["data.source=/no/such/corpus.txt"], "data.source", "an existing file or folder"),
    (["data.tokenizer=wordpiece"], "data.tokenizer", "byte, bpe, gpt2 or a folder"),
    (["data.vocab_size=100"], "data.vocab_size", "an integer in [261, 1048576]"),
    (["data.seq_len=0"], "data.seq_len", "an integer in [2, 1048576], got 0"),
    (["data.seq_len=-64"], "data.seq_len", "got -64"),
    (["data.seq_len=1"], "data.seq_len", "got 1"),
    (["data.seq_len=100000000"], "data.seq_len", "got 100000000"),
    (["data.seq_len=64.5"], "data.seq_len", "must be an integer"),
    (["data.packing=zip"], "data.packing", "wrap or pad"),
    (["data.val_fraction=0"], "data.val_fraction", "a number in (0, 1), got 0.0"),
    (["data.val_fraction=1"], "data.val_fraction", "(0, 1)"),
    (["data.val_fraction=.nan"], "data.val_fraction", "got nan"),
    (["data.split_seed=x"], "data.split_seed", "must be an integer"),
    (['data.text_field=" "'], "data.text_field", "a field name"),
    (['data.hf_split=""'], "data.hf_split", "a split name"),
    (["data.streaming=2"], "data.streaming", "must be true or false"),
    (["data.num_workers=-1"], "data.num_workers", "an integer >= 0"),
    (["data.num_workers=2"], "data.num_workers", "packed in memory: stream it with data.streaming=true"),
    (["model.d_model=0"], "model.d_model", "an integer >= 2"),
    (["model.n_layers=0"], "model.n_layers", "an integer >= 1"),
    (["model.n_heads=0"], "model.n_heads", "an integer >= 1"),
    (["model.n_heads=3"], "model.n_heads", "into heads of even width, got 3: e.g. model.n_heads=2 or model.n_heads=4"),
    (["model.d_model=60", "model.n_heads=4"], "model.n_heads", "model.d_model (60)"),
    (["model.mlp_ratio=0"], "model.mlp_ratio", "a number > 0"),
    (["model.mlp_ratio=.inf"], "model.mlp_ratio", "got inf"),
    (["model.mlp_ratio=0.001"], "model.mlp_ratio", "at least 1 unit"),
    (["model.dropout=1"], "model.dropout", "[0, 1)"),
    (["model.dropout=-0.1"], "model.dropout", "[0, 1)"),
    (["model.time_conditioning=2"], "model.time_conditioning", "must be true or false"),
    (["process.name=diffusion"], "process.name", "one of " + ", ".join(sorted(PROCESSES))),
    (["process.schedule=square"], "process.schedule", "one of loglinear"),
    (["process.t_min=0"], "process.t_min", "(0, 1) for process 'masked'"),
    (["process.t_min=1"], "process.t_min", "got 1.0"),
    (["process.t_min=.nan"], "process.t_min", "got nan"),
    (["process.name=sedd", "process.t_min=-0.5"], "process.t_min", "[0, 1) for process 'sedd'"),
    (["process.antithetic=2"], "process.antithetic", "must be true or false"),
    (["process.recipe=0"], "process.recipe", "one of 1, 2"),
    (["process.blocksize=4"], "blocksize", "its options are schedule, t_min, antithetic"),
    (["process.name=block", "process.mask_rate_min=.nan"], "process.mask_rate_min", "a finite number"),
    (["train.steps=0"], "train.steps", "an integer >= 1, got 0"),
    (["train.batch_size=0"], "train.batch_size", "an integer >= 1, got 0"),
    (["train.micro_batch_size=-1"], "train.micro_batch_size", "an integer >= 0"),
    (["train.micro_batch_size=3"], "train.micro_batch_size", "divide train.batch_size (8), got 3"),
    (["train.micro_batch_size=16"], "train.micro_batch_size", "got 16"),
    (["train.lr=-1"], "train.lr", "a finite number > 0, got -1.0"),
    (["train.lr=0"], "train.lr", "> 0"),
    (["train.lr=.inf"], "train.lr", "got inf"),
    (["train.lr=.nan"], "train.lr", "got nan"),
    (["train.min_lr_ratio=1.5"], "train.min_lr_ratio", "[0, 1]"),
    (["train.warmup_steps=-1"], "train.warmup_steps", "an integer >= 0"),
    (["train.weight_decay=-0.01"], "train.weight_decay", ">= 0"),
    (["train.weight_decay=.nan"], "train.weight_decay", "got nan"),
    (["train.beta1=1"], "train.beta1", "[0, 1)"),
    (["train.beta2=-0.9"], "train.beta2", "[0, 1)"),
    (["train.beta2=.nan"], "train.beta2", "got nan"),
    (["train.grad_clip=-1"], "train.grad_clip", ">= 0 (0: no clipping)"),
    (["train.grad_clip=.inf"], "train.grad_clip", "got inf"),
    (["train.ema_decay=1"], "train.ema_decay", "[0, 1) (0: no EMA)"),
    (["train.precision=fp8"], "train.precision", "one of auto, bf16, fp32"),
    (["train.compile=2"], "train.compile", "must be true or false"),
    (["train.seed=-1"], "train.seed", "[0, 4294967295]"),
    (["train.device=tpu"], "train.device", "auto, cpu, cuda, cuda:N or mps"),
    (["train.parallel=zero3"], "train.parallel", "ddp or fsdp"),
    (["train.activation_checkpointing=2"], "train.activation_checkpointing", "must be true or false"),
    (['run.out_dir=" "'], "run.out_dir", "a folder path"),
    (["run.log_every=0"], "run.log_every", "an integer >= 1"),
    (["run.eval_every=-1"], "run.eval_every", ">= 0 (0: never)"),
    (["run.eval_batches=0"], "run.eval_batches", "an integer >= 1"),
    (["run.save_every=0"], "run.save_every", "an integer >= 1"),
    (["run.sample_every=-5"], "run.sample_every", ">= 0"),
    (["run.sample_steps=0"], "run.sample_steps", "an integer >= 1"),
    (["run.progress=2"], "run.progress", "must be true or false"),
]
# keys any value of the right type suits (the type itself is checked when it is set)
UNRESTRICTED = {"process.extra"}


@pytest.mark.parametrize("overrides, key, allowed", BAD, ids=[" ".join(o) for o, _, _ in BAD])
def test_a_bad_value_is_one_line_naming_the_key_before_any_work(tmp_path, capsys, overrides, key, allowed):
    run = tmp_path / "run"
    out = [] if key == "run.out_dir" else ["--out", str(run)]  # --out would override run.out_dir
    assert main(["train", *out, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textdiffusion: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert key in err and allowed in err, err
    assert not run.exists(), "work started before the config was checked"


def test_the_table_covers_every_key():
    keys = {f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            for f in dataclasses.fields(section.default_factory())}
    tested = {key for overrides, key, _ in BAD for o in overrides if o.startswith(key + "=")}
    assert keys - UNRESTRICTED - tested == set()


def test_resuming_checks_the_overrides_too(tmp_path, capsys):
    folder = tmp_path / "run" / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train_config": Config().to_dict()}))
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "train.batch_size=0"]) == 2
    assert "train.batch_size must be an integer >= 1, got 0" in capsys.readouterr().err


def test_a_config_built_in_python_is_checked_by_the_trainer(tmp_path):
    cfg = load_config("tiny", [f"run.out_dir={tmp_path / 'run'}"])
    cfg.data.seq_len = 0
    with pytest.raises(UserError, match=r"data.seq_len must be an integer in \[2, 1048576\], got 0"):
        Trainer(cfg)
    cfg.data.seq_len = "64"  # a wrong type set from Python is reported, not a TypeError
    with pytest.raises(UserError, match="data.seq_len must be"):
        cfg.validate()
    assert not (tmp_path / "run").exists()


def test_every_preset_and_a_yaml_exponent_are_valid():
    for name in presets():
        load_config(name)
    assert load_config("tiny", ["train.lr=1e-3"]).train.lr == 0.001  # YAML 1.1 reads 1e-3 as a string
