"""SFT through the trainer (`data.packing=chat`), `Pipeline.chat` on the result, and `textdiffusion chat` with
stdin piped into a real process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textdiffusion.api.chat import encode_chat
from textdiffusion.api.pipeline import Pipeline
from textdiffusion.cli import main
from textdiffusion.train.config import load_config
from textdiffusion.train.sft import sft_loss
from textdiffusion.train.trainer import Trainer


def write_chats(path: Path, n: int = 30) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            a, b = i % 7, (3 * i) % 5
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"{a}+{b}"},
                                              {"role": "assistant", "content": str(a + b)}]}) + "\n")
    return path


def sft_overrides(root: Path, *extra: str) -> list[str]:
    return [f"run.out_dir={root / 'run'}", f"data.source={write_chats(root / 'chat.jsonl')}", "data.packing=chat",
            "data.seq_len=40", "data.val_fraction=0.2", "train.steps=2", "train.batch_size=8", "train.warmup_steps=1",
            "train.device=cpu", "run.eval_every=2", "run.save_every=2", "run.sample_steps=2", "run.progress=false",
            "run.log_every=1", *extra]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> tuple[Trainer, Path, float, float]:
    root = tmp_path_factory.mktemp("sft")
    trainer = Trainer(load_config("tiny", sft_overrides(root)))
    # the first step's loss, recomputed by hand from the same batch and noise before the update
    state, gen = trainer.batches.state_dict(), torch.Generator().manual_seed(trainer.cfg.train.seed)
    x, reply = trainer.batches.next_global()
    trainer.batches.load_state_dict(state)
    with torch.no_grad():
        expected = float(sft_loss(trainer.process, trainer.model, x, trainer.process.train_noise(x, gen), reply).mean)
    loss = trainer.train_step()
    trainer.run()
    return trainer, root / "run", loss, expected


def test_the_trainer_takes_llada_sft_steps(sft_run):
    trainer, run, loss, expected = sft_run
    assert abs(loss - expected) < 1e-5 * abs(expected)
    # prompts are context: validation scores exactly the reply tokens (reply + [EOS] padding) of its rows
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_nelbo" in r]
    assert evals and evals[-1]["val_tokens"] == int(trainer.val_mask.sum()) < trainer.val.numel()
    prompt_part = trainer.val[~trainer.val_mask]
    assert not (prompt_part == trainer.tok.eos_id).any()  # [EOS] only in the scored part
    sample = next(r["sample"] for r in rows if "sample" in r)
    assert sample.startswith("<|user|>\n")  # the end-of-run sample answers a validation prompt


def test_pipeline_chat_keeps_the_prompt_and_stops_at_eos(sft_run):
    _, run, _, _ = sft_run
    pipe = Pipeline.from_pretrained(run, device="cpu")
    messages = [{"role": "user", "content": "3+4"}]
    out = pipe.chat(messages, num_samples=2, seed=0, steps=4, cfg_scale=1.0)
    prompt = encode_chat(pipe.tokenizer, messages)
    assert out.prompt_length == len(prompt) and out.output.ids.shape == (2, pipe.seq_len)
    assert torch.equal(out.output.ids[:, : len(prompt)], torch.tensor([prompt, prompt]))
    for row, reply in zip(out.output.ids, out.replies):
        tail = row[len(prompt):].tolist()
        end = tail.index(pipe.tokenizer.eos_id) if pipe.tokenizer.eos_id in tail else len(tail)
        assert reply == pipe.tokenizer.decode(tail[:end], mask_char=None).strip()


def test_chat_command_streams_a_piped_conversation(sft_run):
    _, run, _, _ = sft_run
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run([sys.executable, "-m", "textdiffusion", "chat", str(run), "--steps", "4", "--seed", "5",
                           "--stream", "--device", "cpu"], input="1+2\n" + "long question " * 4 + "\n",
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr  # the second turn failed (below): the chat goes on, then exits 2
    lines = proc.stdout.splitlines()
    steps = [line.split(" | ", 1)[1] for line in lines if " | " in line]
    replies = [line[len("assistant: "):] for line in lines if line.startswith("assistant: ")]
    assert len(replies) == 1 and len(steps) == 5  # frames of steps 0..4, then the reply
    assert set(steps[0]) == {"▒"} and "▒" not in steps[-1]
    assert [s.count("▒") for s in steps] == sorted((s.count("▒") for s in steps), reverse=True)
    pipe = Pipeline.from_pretrained(run, device="cpu")
    assert replies[0] == pipe.chat([{"role": "user", "content": "1+2"}], seed=5, steps=4).replies[0]
    # the second message leaves no room in the model's 40 tokens: one line on stderr, and the chat goes on
    assert proc.stderr.count("textdiffusion: error:") == 1 and "no room for a reply" in proc.stderr


def test_fresh_chat_answers_every_line_on_its_own(sft_run, monkeypatch, capsys):
    _, run, _, _ = sft_run
    monkeypatch.setattr(sys, "stdin", io.StringIO("1+2\n\n3+4\n"))
    assert main(["chat", str(run), "--fresh", "--steps", "2", "--seed", "1", "--device", "cpu"]) == 0
    replies = [line[len("assistant: "):] for line in capsys.readouterr().out.splitlines()]
    pipe = Pipeline.from_pretrained(run, device="cpu")
    assert replies == [pipe.chat([{"role": "user", "content": q}], seed=seed, steps=2).replies[0]
                       for q, seed in (("1+2", 1), ("3+4", 2))]


@pytest.mark.parametrize("extra, message", [
    (["process.name=d3pm"], "data.packing=chat trains masked, block, autoregressive models"),
    (["data.source=shakespeare"], "reads a .jsonl file of conversations"),
])
def test_chat_training_errors_are_one_line(tmp_path, capsys, extra, message):
    assert main(["train", "--config", "tiny", *sft_overrides(tmp_path, *extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_cfg_scale_stops_the_chat_command_before_loading(capsys):
    assert main(["chat", "no/such/model", "--cfg-scale", "-1"]) == 2
    assert "cfg_scale must be a finite number >= 0" in capsys.readouterr().err
