"""hf: streams read by file (data/shares.py) and tokenised in DataLoader workers (data/workers.py), on a local
multi-file dataset streamed through datasets.load_dataset exactly as a Hub dataset is: each of 2 ranks reads only
its own files and together they cover the training split once; any number of workers gives the very batches and
resumable states one process gives; a stopped run resumes with the rows a straight run draws; a run saved on
2 processes is refused on 1."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textdiffusion.core.errors import UserError
from textdiffusion.data import shares, workers
from textdiffusion.data.corpus import iter_documents, plan_split
from textdiffusion.data.packing import ShardedStreamBatches
from textdiffusion.data.shares import describe_hf_share, iter_share, iter_train_shard
from textdiffusion.data.tokenizers import build_tokenizer
from textdiffusion.train import checkpoint as ckpt
from textdiffusion.train.trainer import Trainer

pytest.importorskip("datasets")


def hf_dataset(folder: Path, docs: list[str], files: int) -> str:
    """`docs` dealt into `files` .jsonl files (file f holds documents f, f + files, ...): an hf: source."""
    folder.mkdir()
    for f in range(files):
        lines = "".join(json.dumps({"text": d}) + "\n" for d in docs[f::files])
        (folder / f"part{f}.jsonl").write_text(lines)
    return f"hf:{folder}"


@pytest.fixture(scope="module")
def docs(tmp_path_factory, write_corpus) -> list[str]:
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "hamlet.jsonl", n_docs=48, doc_chars=300)
    return [json.loads(line)["text"] for line in corpus.read_text().splitlines()]


@pytest.fixture(scope="module")
def four(tmp_path_factory, docs) -> str:
    return hf_dataset(tmp_path_factory.mktemp("four") / "ds", docs, 4)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("byte")


def plan_of(source: str):
    return plan_split(source, 0.1, 0, count=not source.startswith("hf:"))


def test_two_ranks_read_their_own_files_and_together_all_the_training_documents(four):
    plan = plan_of(four)
    train = list(iter_documents(four, "train", 0.1, 0, plan=plan))
    shares = [[t for t, _ in iter_train_shard(four, plan, rank=r, world=2)] for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(train) and not set(shares[0]) & set(shares[1])
    files = [{r.key.split(":")[-2] for r in iter_share(four, rank=rank, world=2)} for rank in range(2)]
    assert files == [{"0", "2"}, {"1", "3"}]  # the key's file: rank r reads files r, r + 2
    assert "reads its own 2 of the 4 files" in describe_hf_share(four, "train", 2)


def test_a_rank_never_opens_another_ranks_files(tmp_path, docs):
    """Files 1 and 3 (rank 1's of 2) are not JSON: rank 0 reads its share, rank 1 fails on its first file."""
    source = hf_dataset(tmp_path / "ds", docs, 4)
    plan = plan_of(source)
    # rank 0's share read while every file is valid (which documents go to validation hangs on the path's hash)
    intact = [text for text, _ in iter_train_shard(source, plan, rank=0, world=2)]
    for f in (1, 3):
        (tmp_path / "ds" / f"part{f}.jsonl").write_text("not json\n" * 12)
    assert len(intact) >= 12  # files 0 and 2 hold 24 documents, about a tenth of them validation
    assert [text for text, _ in iter_train_shard(source, plan, rank=0, world=2)] == intact
    with pytest.raises(Exception, match="JSON parse error"):  # datasets reads the file it was given
        list(iter_train_shard(source, plan, rank=1, world=2))


def test_files_that_do_not_split_evenly_are_shared_document_by_document(tmp_path, docs):
    source = hf_dataset(tmp_path / "ds", docs, 3)
    plan = plan_of(source)
    train = list(iter_documents(source, "train", 0.1, 0, plan=plan))
    shares = [[t for t, _ in iter_train_shard(source, plan, rank=r, world=2)] for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(train) and not set(shares[0]) & set(shares[1])
    # dealt one document in two: the whole share (validation documents too, which depend on the path's hash)
    dealt = [len(list(iter_share(source, rank=r, world=2))) for r in range(2)]
    assert dealt == [len(docs) // 2] * 2
    assert "do not split evenly over 2 processes" in describe_hf_share(source, "train", 2)


def batches(source: str, tok, workers_: int, rank: int = 0, world: int = 1, group: int = 3) -> ShardedStreamBatches:
    """Rank `rank` alone (its rows stand for the gathered batch), tokenised by `workers_` workers in groups of
    `group` documents: small, so that every worker gets several groups of a share of ~20 documents."""
    plan = plan_of(source)
    share = workers.Share(source, plan, "text", "train", rank, world)
    open_ids = partial(workers.open_encoded, share, tok, workers_, group=group) if workers_ else None
    return ShardedStreamBatches(lambda pos: iter_train_shard(source, plan, "text", "train", rank, world, pos), tok,
                                96, "wrap", global_batch=4 * world, rank=rank, world=world,
                                gather_states=lambda state: [state if r == rank else None for r in range(world)],
                                open_ids=open_ids)


def draw(feed: ShardedStreamBatches, n: int) -> tuple[list[torch.Tensor], list[dict]]:
    states, rows = [], []
    for _ in range(n):
        states.append(json.loads(json.dumps(feed.state_dict())))  # as the JSON trainer state holds it
        rows.append(feed.next_global())
    return rows, states


@pytest.mark.filterwarnings("ignore:This DataLoader will create 5 worker processes")  # torch's: > CPU count
@pytest.mark.parametrize("n_workers", [1, 2, 5], ids=["1 worker", "2 workers", "5 workers > 4 files"])
def test_any_number_of_workers_gives_the_same_batches_and_states(four, tok, n_workers):
    """Rank 1 of 2 across two epoch wraps (a share of 24 documents, 8 groups of 3, about 17 batches)."""
    rows0, states0 = draw(batches(four, tok, 0, rank=1, world=2), 40)
    rows, states = draw(batches(four, tok, n_workers, rank=1, world=2), 40)
    assert all(torch.equal(a, b) for a, b in zip(rows0, rows)) and states == states0
    assert states[-1]["shards"][1]["epoch"] >= 2


@pytest.mark.parametrize("source", ["jsonl", "hf"])
def test_a_stream_tokenised_by_workers_resumes_with_the_rows_a_straight_run_draws(tmp_path, docs, four, tok, source,
                                                                                  monkeypatch, write_corpus):
    monkeypatch.setattr(shares, "HF_BATCH", 5)  # several reads per file: positions inside a later read
    if source == "jsonl":
        four = str(write_corpus(tmp_path / "c.jsonl", n_docs=48, doc_chars=300))
    rows, states = draw(batches(four, tok, 0, rank=1, world=2), 24)
    for at in (3, 11, 22):  # mid-document, and across the end of an epoch
        resumed = batches(four, tok, 2, rank=1, world=2)
        resumed.load_state_dict(states[at])
        assert all(torch.equal(resumed.next_global(), rows[i]) for i in range(at, at + 2)), at
    later_read = [p["row"] > p["skip"] for p in (s["shards"][1]["position"] for s in states[1:]) if "skip" in p]
    assert source == "jsonl" or any(later_read)


def test_a_stream_saved_on_two_processes_is_refused_on_one(four, tok):
    two = batches(four, tok, 2, rank=0, world=2)
    two.next_global()
    with pytest.raises(UserError, match="saved with 2 processes.*resume it with 2 processes.*prepare"):
        batches(four, tok, 2).load_state_dict(two.state_dict())


def test_a_position_of_another_format_or_file_count_is_refused(tmp_path, docs, four, tok):
    feed = batches(four, tok, 0)
    feed.next_global()
    state = feed.state_dict()
    position = state["shards"][0]["position"]
    old = {**state, "shards": [{**state["shards"][0], "position": {"hf_state": position["hf_state"], "ordinal": 9}}]}
    with pytest.raises(UserError, match="read the whole stream on every process.*start afresh"):
        feed.load_state_dict(old)
        feed.next_global()
    five = hf_dataset(tmp_path / "five", docs, 5)
    moved = batches(five, tok, 0)
    moved.load_state_dict(state)
    with pytest.raises(UserError, match="now has 5 files.*in its 4 files"):
        moved.next_global()


def test_a_bad_record_read_by_a_worker_is_the_usual_one_line_error(tmp_path, tok):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "part0.jsonl").write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(9)))
    with pytest.raises(UserError, match="^[^\n]*record has no field 'text' \\(set data.text_field\\)$"):
        batches(f"hf:{folder}", tok, 2).next_global()


def test_the_trainer_with_workers_trains_and_resumes_exactly_as_without(tmp_path, four, monkeypatch, max_diff,
                                                                        tiny_config):
    monkeypatch.setattr(workers, "GROUP", 2)  # several groups per worker even in this small corpus
    source = Path(four[3:])

    def config(out: str, n_workers: int):
        # a streamed document is validation by a hash of its key, which holds the folder's (temporary) path: at 0.1,
        # one run in 160 put none of the 48 documents there
        return tiny_config(tmp_path / out, source, f"data.source={four}", f"data.num_workers={n_workers}",
                           "data.val_fraction=0.3", steps=4, every=2)

    Trainer(config("plain", 0)).run()
    cut = Trainer(config("cut", 2))
    for _ in range(2):
        cut.train_step()
    cut.save()
    Trainer(config("cut", 2), resume=True).run()
    a, b = (load_file(tmp_path / run / "checkpoint" / ckpt.WEIGHTS_FILE) for run in ("plain", "cut"))
    assert max_diff(a, b) == 0
