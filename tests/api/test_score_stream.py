"""Scoring long texts: windows in batches, files read piece by piece in bounded memory, a progress bar."""

from __future__ import annotations

import pytest
import torch

import textdiffusion.api.scoring as scoring_module
from textdiffusion.api.pipeline import Pipeline
from textdiffusion.api.scoring import read_text_blocks
from textdiffusion.cli import main
from textdiffusion.core.errors import UserError
from textdiffusion.data.tokenizers import train_bpe
from textdiffusion.models import ModelConfig, Transformer
from textdiffusion.processes import Autoregressive, MaskedDiffusion
from textdiffusion.processes.likelihood import nelbo

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\r\n"
        "The slings  and arrows of outrageous fortune,\n\n   Or to take arms against a sea of troubles ✓\t") * 6


def _pipeline(byte_tok, process: str) -> Pipeline:
    torch.manual_seed(0)
    causal = process == "ar"
    model = Transformer(ModelConfig(vocab_size=byte_tok.vocab_size, seq_len=32, d_model=32, n_layers=1, n_heads=2,
                                    causal=causal))
    cls = Autoregressive if causal else MaskedDiffusion
    return Pipeline(model, cls(vocab_size=byte_tok.vocab_size, mask_id=byte_tok.mask_id), byte_tok)


@pytest.fixture
def ar_pipeline(byte_tok) -> Pipeline:
    return _pipeline(byte_tok, "ar")


def test_read_text_blocks_are_bounded_and_lossless(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode() + b"\xe9\xff bad bytes")  # not UTF-8 at the end
    reads: list[int] = []
    real_open = open

    class Recording:  # the file object read_text_blocks gets: records how much it asks for at once
        def __init__(self, fh):
            self.fh, self.buffer = fh, fh.buffer

        def read(self, n: int) -> str:
            reads.append(n)
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(scoring_module, "open", lambda *a, **k: Recording(real_open(*a, **k)), raising=False)
    pieces = list(read_text_blocks(path, 50))
    assert max(reads) <= 50 and max(len(p) for p, _ in pieces) <= 50
    assert "".join(p for p, _ in pieces) == path.read_text(encoding="utf-8", errors="replace")
    assert [n for _, n in pieces] == sorted(n for _, n in pieces) and pieces[-1][1] == path.stat().st_size
    # cut just before a whitespace that follows a word, where every pre-tokenizer starts a new word
    assert all(p[-1:].strip() and nxt[:1].isspace() for (p, _), (nxt, _) in zip(pieces, pieces[1:]))


def test_bpe_tokens_of_the_pieces_are_those_of_the_whole_text(tmp_path):
    tok = train_bpe([TEXT] * 5, vocab_size=300)
    path = tmp_path / "t.txt"
    path.write_text(TEXT * 3, encoding="utf-8")
    whole = tok.encode(path.read_text(encoding="utf-8"))
    for block in (17, 64, 1000):
        assert [i for p, _ in read_text_blocks(path, block) for i in tok.encode(p)] == whole


@pytest.mark.parametrize("process", ["ar", "masked"])
def test_score_file_streams_to_the_same_result_as_the_whole_text(byte_tok, tmp_path, process):
    pipe = _pipeline(byte_tok, process)
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    assert len(byte_tok.encode(text)) > 4 * 32 + 5  # several batches of 4 windows and a partial window
    whole = pipe.score(text, t_samples=3, seed=5, batch_size=4)[0]
    streamed = pipe.score_file(path, t_samples=3, seed=5, batch_size=4, block_chars=40)
    assert streamed == whole
    assert pipe.score_stream([text[:100], text[100:]], t_samples=3, seed=5, batch_size=4) == whole
    assert whole.n_tokens == len(byte_tok.encode(text)) and whole.exact == (process == "ar")


def test_batched_windows_match_one_window_at_a_time(ar_pipeline):
    """The exact (AR) likelihood does not depend on how the windows are batched."""
    ids = torch.tensor(ar_pipeline.tokenizer.encode(TEXT))
    windows = ids.split(32)
    nats = sum(nelbo(ar_pipeline.model, ar_pipeline.process, w[None], t_samples=1).nats_per_token * len(w)
               for w in windows)
    for batch_size in (1, 3, 16):
        res = ar_pipeline.score(TEXT, batch_size=batch_size)[0]
        assert res.nats_per_token == pytest.approx(nats / len(ids), rel=1e-5)
        assert res.stderr == 0.0 and res.t_samples == 1


def test_diffusion_stderr_is_the_monte_carlo_error_of_the_text(byte_tok):
    pipe = _pipeline(byte_tok, "masked")
    few, many = (pipe.score(TEXT, t_samples=t, seed=1)[0] for t in (2, 32))
    assert 0 < many.stderr < few.stderr  # more draws, a smaller error
    assert abs(few.nats_per_token - many.nats_per_token) < 6 * few.stderr


def test_score_file_errors(ar_pipeline, tmp_path):
    with pytest.raises(UserError, match="not found"):
        ar_pipeline.score_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        ar_pipeline.score_file(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="iterable of str"):
        ar_pipeline.score_stream("a str is not a stream of pieces")
    with pytest.raises(UserError, match="piece 1 must be a str"):
        ar_pipeline.score_stream(["ok", b"bytes"])


def test_progress_bar_reports_the_running_score(ar_pipeline, tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    ar_pipeline.score_file(path, progress=True)
    err = capsys.readouterr().err
    assert "scoring" in err and "nats/token" in err and "100%" in err
    ar_pipeline.score_file(path)  # auto: stderr is not a terminal here, so no bar
    assert capsys.readouterr().err == ""


def test_cli_scores_files_with_invalid_utf8_and_shows_progress(ar_pipeline, tmp_path, capsys):
    model = str(ar_pipeline.save_pretrained(tmp_path / "m"))
    path = tmp_path / "binary"
    path.write_bytes(bytes(range(256)) * 4)
    assert main(["score", "--model", model, "--file", str(path), "--progress"]) == 0
    captured = capsys.readouterr()
    assert f"file {path}" in captured.out and "exact" in captured.out
    assert "scoring" in captured.err and "nats/token" in captured.err


def test_windows_draw_their_own_noise_so_the_stderr_is_honest(byte_tok):
    """Each window must get its own draws of t: with one seed reused for every window, all windows share
    their t's, the text's estimate swings with the seed far more than its reported ± says."""
    pipe = _pipeline(byte_tok, "masked")
    runs = [pipe.score(TEXT, t_samples=2, seed=seed)[0] for seed in range(8)]
    spread = torch.tensor([r.nats_per_token for r in runs]).std().item()
    assert spread < 2.5 * max(r.stderr for r in runs)
