import json

import pytest
import torch

from textdiffusion.core.errors import UserError
from textdiffusion.data.corpus import is_validation, iter_documents, plan_split
from textdiffusion.data.packing import ChunkBatches, StreamBatches, iter_chunks, pack_tensor


def write_corpus(tmp_path, n=60):
    docs = [f"document number {i} " + "word " * (i % 7 + 3) for i in range(n)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    return docs


def test_split_is_disjoint_complete_and_seeded(tmp_path):
    docs = write_corpus(tmp_path)
    src = str(tmp_path / "data.jsonl")
    train = list(iter_documents(src, "train", val_fraction=0.2, seed=3))
    val = list(iter_documents(src, "validation", val_fraction=0.2, seed=3))
    assert sorted(train + val) == sorted(docs)
    assert not set(train) & set(val)
    assert 0 < len(val) < len(docs) / 2
    assert val == list(iter_documents(src, "validation", val_fraction=0.2, seed=3))
    assert val != list(iter_documents(src, "validation", val_fraction=0.2, seed=4))


def test_bundled_shakespeare_split_is_fixed():
    names = [f"{i}" for i in range(3)]
    assert [is_validation(n, 0, 0.05) for n in names] == [is_validation(n, 0, 0.05) for n in names]
    val = list(iter_documents("shakespeare", "validation"))
    train_first = next(iter_documents("shakespeare", "train"))
    assert 1 <= len(val) <= 6 and train_first not in val
    assert any("Pericles" in v or "PERICLES" in v for v in val)  # the split of seed 0, used by benchmarks


def test_bundled_shakespeare_is_split_by_document_as_before():
    plan = plan_split("shakespeare", count=True)
    assert not plan.by_position and plan.documents == 43 and 1 <= plan.val_documents <= 6
    assert plan.describe("shakespeare") == (f"validation: {plan.val_documents} of 43 documents of shakespeare, "
                                            "by a seeded hash (data.val_fraction=0.05, data.split_seed=0)")
    quick = plan_split("shakespeare")  # stops reading once both sides have a document
    assert not quick.by_position and quick.documents is None


def test_too_few_documents_for_the_hash_split_are_split_by_position(tmp_path):
    texts = {"a.txt": "alpha " * 50, "b.md": "beta " * 80}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    assert not any(is_validation(name, 0, 0.05) for name in texts)  # the hash would leave validation empty
    plan = plan_split(str(tmp_path), 0.05, count=True)
    assert plan.by_position and plan.documents == 2
    train = list(iter_documents(str(tmp_path), "train", 0.05, plan=plan))
    val = list(iter_documents(str(tmp_path), "validation", 0.05, plan=plan))
    assert [t + v for t, v in zip(train, val)] == list(texts.values())
    assert [len(v) for v in val] == [int(len(t) * 0.05) for t in texts.values()] == [15, 20]
    assert plan.describe(str(tmp_path)) == (f"validation: the last 5% of each of the 2 documents of {tmp_path} by "
                                            "position (35 of 700 characters), as 2 documents are too few to split "
                                            "by document")
    # a seed whose hash puts a document on each side splits by document again
    seed = next(s for s in range(100) if is_validation("a.txt", s, 0.5) != is_validation("b.md", s, 0.5))
    assert not plan_split(str(tmp_path), 0.5, seed).by_position
    assert len(list(iter_documents(str(tmp_path), "validation", 0.5, seed))) == 1


def test_sources_txt_folder_parquet_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta text")
    assert sorted(iter_documents(str(tmp_path), "all")) == ["alpha text", "beta text"]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["one", "two", None]}), tmp_path / "x.parquet")
    assert list(iter_documents(str(tmp_path / "x.parquet"), "all", text_field="body")) == ["one", "two"]
    with pytest.raises(UserError, match="not found"):
        list(iter_documents(str(tmp_path / "missing.txt")))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(UserError, match="no field 'text'"):
        list(iter_documents(str(tmp_path / "bad.jsonl"), "all"))


def test_hf_dataset_streaming_on_local_files(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    docs = write_corpus(folder, n=10)
    streamed = list(iter_documents(f"hf:{folder}", "all"))
    assert streamed == docs


def test_wrap_packing_concatenates_with_separators(byte_tok):
    docs = ["abc", "defgh", "ij"]
    chunks = list(iter_chunks(docs, byte_tok, seq_len=4, mode="wrap"))
    flat = [i for c in chunks for i in c]
    b, e = byte_tok.bos_id, byte_tok.eos_id
    expected = [b, *b"abc", e, b, *b"defgh", e, b, *b"ij", e]
    assert all(len(c) == 4 for c in chunks)
    assert flat == expected[: len(flat)] and len(expected) - len(flat) < 4


def test_pad_packing_one_document_per_row(byte_tok):
    rows = pack_tensor(["abc", "a much longer document"], byte_tok, seq_len=8, mode="pad")
    b, e, p = byte_tok.bos_id, byte_tok.eos_id, byte_tok.pad_id
    assert rows[0].tolist() == [b, *b"abc", e, p, p, p]
    assert rows[1].tolist() == [b, *b"a much "]
    with pytest.raises(UserError, match="packing mode"):
        list(iter_chunks(["x"], byte_tok, 4, mode="zip"))


def test_chunk_batches_epochs_and_exact_resume():
    chunks = torch.arange(40).view(10, 4)
    a = ChunkBatches(chunks, global_batch=3, seed=1)
    seen = [a.next_global() for _ in range(3)]
    firsts = torch.cat(seen)[:, 0].tolist()
    assert len(set(firsts)) == 9  # no repeat inside an epoch
    state = a.state_dict()
    rest_a = [a.next_global() for _ in range(5)]
    b = ChunkBatches(chunks, global_batch=3, seed=1)
    b.load_state_dict(state)
    rest_b = [b.next_global() for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(rest_a, rest_b))
    assert a.epoch >= 1
    with pytest.raises(UserError, match="larger than"):
        ChunkBatches(chunks, global_batch=11)


def test_stream_batches_resume_skips_consumed(byte_tok):
    docs = [f"doc {i} text" for i in range(30)]

    def make():
        return iter_chunks(docs, byte_tok, seq_len=8)

    a = StreamBatches(make, global_batch=4)
    a.next_global()
    a.next_global()
    state = a.state_dict()
    expect = a.next_global()
    b = StreamBatches(make, global_batch=4)
    b.load_state_dict(state)
    assert torch.equal(b.next_global(), expect)
