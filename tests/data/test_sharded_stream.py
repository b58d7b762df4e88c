"""Streamed data sharded by rank (data/shares.iter_train_shard, data/packing.ShardedStreamBatches): each rank
reads and tokenises only its own documents, the ranks together cover the training split exactly once, and a
resumed stream continues from its recorded position (a seek) with the next rows a straight run draws, even in
the middle of a document and across the end of an epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textdiffusion.core.errors import UserError
from textdiffusion.data.corpus import iter_documents, plan_split
from textdiffusion.data.packing import ShardedStreamBatches
from textdiffusion.data.shares import iter_train_shard
from textdiffusion.data.tokenizers import build_tokenizer
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.trainer import Trainer

WORKER = Path(__file__).resolve().parent / "stream_worker.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl", n_docs=60, doc_chars=300)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("byte")


def sources(tmp_path: Path, corpus: Path) -> list[str]:
    """The same documents as one .jsonl, a folder of .txt files and a local Hugging Face dataset (3 .jsonl)."""
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    txt = tmp_path / "txt"
    txt.mkdir()
    for i, doc in enumerate(docs):
        (txt / f"{i:03d}.txt").write_text(doc)
    hf = tmp_path / "hf"
    hf.mkdir()
    for part in range(3):
        (hf / f"part{part}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[part::3]))
    return [str(corpus), str(txt), f"hf:{hf}"]


def test_ranks_split_the_training_documents_exactly(tmp_path, corpus):
    pytest.importorskip("datasets")
    for source in sources(tmp_path, corpus):
        plan = plan_split(source, 0.1, 0, count=not source.startswith("hf:"))
        train = list(iter_documents(source, "train", 0.1, 0, plan=plan))
        assert [t for t, _ in iter_train_shard(source, plan)] == train, source
        shares = [[t for t, _ in iter_train_shard(source, plan, rank=r, world=3)] for r in range(3)]
        assert sorted(sum(shares, [])) == sorted(train) and all(shares), source
        assert max(map(len, shares)) - min(map(len, shares)) <= 1 + len(train) // 5, source


def batches(source: str, tok, rank: int = 0, world: int = 1, seq_len: int = 24, plan=None) -> ShardedStreamBatches:
    plan = plan or plan_split(source, 0.1, 0, count=not source.startswith("hf:"))
    # one rank alone: its rows stand for the gathered batch, and the other ranks' states are blanks
    return ShardedStreamBatches(lambda pos: iter_train_shard(source, plan, "text", "train", rank, world, pos),
                                tok, seq_len, "wrap", global_batch=4 * world, rank=rank, world=world,
                                gather_states=lambda state: [state if r == rank else None for r in range(world)])


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["jsonl", "txt_folder", "hf_local"])
def test_a_resumed_rank_draws_the_rows_a_straight_run_draws(tmp_path, corpus, tok, kind):
    """Rank 1 of 2 checkpoints at several points (mid-document, after an epoch wrap) and resumes each one."""
    if kind == 2:
        pytest.importorskip("datasets")
    source = sources(tmp_path, corpus)[kind]
    straight = batches(source, tok, rank=1, world=2, seq_len=96)
    states, rows = [], []
    for _ in range(60):  # a share is ~27 documents of ~300 bytes: ~21 batches of 4 x 96, so about 3 epochs
        states.append(straight.state_dict())
        rows.append(straight.next_global())
    assert straight.epoch >= 2 and any(s["shards"][1]["pending"] for s in states)
    for at in (1, 5, 20, 23, 59):
        resumed = batches(source, tok, rank=1, world=2, seq_len=96)
        resumed.load_state_dict(json.loads(json.dumps(states[at])))  # as the JSON trainer state holds it
        assert all(torch.equal(resumed.next_global(), rows[i]) for i in range(at, min(at + 3, 60))), (source, at)


def test_resuming_seeks_instead_of_reading_the_stream_again(tmp_path, corpus, tok):
    """Overwrite every line before the recorded position with invalid JSON: a resume that read through the
    stream from its start would fail on them; a seek never reads them."""
    source = tmp_path / "c.jsonl"
    source.write_bytes(corpus.read_bytes())
    plan = plan_split(str(source), 0.1, 0)  # the split is planned once, from the first documents
    straight = batches(str(source), tok, plan=plan)
    for _ in range(40):
        straight.next_global()
    state = straight.state_dict()
    expect = [straight.next_global() for _ in range(3)]
    offset = state["shards"][0]["position"]["offset"]
    assert offset > len(source.read_bytes()) // 10
    data = source.read_bytes()
    source.write_bytes(b"".join(b"{" * (len(line) - 1) + b"\n" for line in data[:offset].splitlines(keepends=True))
                       + data[offset:])
    resumed = batches(str(source), tok, plan=plan)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_global(), e) for e in expect)


def test_a_sharded_stream_resumes_only_on_the_same_number_of_ranks(corpus, tok):
    two = batches(str(corpus), tok, rank=0, world=2)
    two.next_global()
    one = batches(str(corpus), tok)
    with pytest.raises(UserError, match="saved with 2 processes.*resume it with 2 processes.*prepare"):
        one.load_state_dict(two.state_dict())


def test_the_trainer_resumes_a_stream_exactly(tmp_path, corpus, max_diff, tiny_config):
    cfg = tiny_config(tmp_path / "run", corpus, "data.streaming=true", steps=4, every=2)
    straight = Trainer(cfg)
    straight.run()
    cut = Trainer(tiny_config(tmp_path / "cut", corpus, "data.streaming=true", steps=4, every=2))
    for _ in range(2):
        cut.train_step()
    cut.save()
    resumed = Trainer(tiny_config(tmp_path / "cut", corpus, "data.streaming=true", steps=4, every=2), resume=True)
    resumed.run()
    a = load_file(tmp_path / "run" / "checkpoint" / ckpt.WEIGHTS_FILE)
    b = load_file(tmp_path / "cut" / "checkpoint" / ckpt.WEIGHTS_FILE)
    assert max_diff(a, b) == 0


@pytest.mark.slow
def test_two_processes_stream_their_own_shares_and_resume_exactly(tmp_path, corpus, dist_vars, free_port, losses,
                                                                  max_diff, repo_root):
    """torchrun, 2 processes: each reads its own 2 of the 4 files of a local hf: dataset and tokenises them in
    2 DataLoader workers (forked from a process in a gloo group)."""
    pytest.importorskip("datasets")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env["OMP_NUM_THREADS"] = "1"
    four = tmp_path / "four"
    four.mkdir()
    docs = corpus.read_text().splitlines(keepends=True)
    for f in range(4):
        (four / f"part{f}.jsonl").write_text("".join(docs[f::4]))
    overrides = ["run.progress=false", f"data.source=hf:{four}", "data.num_workers=2", "data.val_fraction=0.3",
                 "data.seq_len=32",
                 "train.steps=4", "train.batch_size=8", "train.warmup_steps=2", "train.precision=fp32",
                 "train.device=cpu", "run.log_every=1", "run.eval_every=2", "run.save_every=2", "run.sample_steps=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), str(tmp_path), *overrides]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count("data: each of the 2 processes reads its own 2 of the 4 files") == 2  # once per run
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["world_size"] for i in info] == [2, 2]
    shards = info[0]["state"]["shards"]
    assert [s["position"]["shard"] % 2 for s in shards] == [0, 1], "a rank read another's files"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    weights = max_diff(load_file(straight / "checkpoint" / ckpt.WEIGHTS_FILE),
                       load_file(resumed / "checkpoint" / ckpt.WEIGHTS_FILE))
    assert losses(straight) == losses(resumed) and weights == 0
