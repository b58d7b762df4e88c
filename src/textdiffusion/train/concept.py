"""Training a sentence-concept model (Large Concept Model style, issue 35 item 3; `textdiffusion concept train`):

1. Sentences of the corpus's training split (data/sentences.py, at most max_chars each), a run of consecutive ones
   from every document alike (`spread`), embedded by the frozen encoder (models/sentence_encoder.py: it generated
   none of this text); the vectors are cached in the model folder (`read_cache`, `write_cache`) and standardised by
   a scaler fitted on them (processes/concept.py's EmbeddingScaler).
2. The decoder (models/concept.py) learns embedding -> sentence by teacher forcing, each embedding perturbed by
   N(0, decoder_noise^2) in standardised units so that it also reads generated vectors.
3. The denoiser learns the next sentence's embedding from the ones before it (processes/concept.py's x0 MSE) on
   windows of `window` consecutive sentences of one document.
The folder is written atomically at the end (interop/concept_folder.py). This is not the token trainer
(train/trainer.py): the units are sentence vectors, and the two networks train one after the other.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ..api.concept import ConceptModel, Encoder
from ..core.errors import UserError
from ..data.corpus import iter_documents
from ..data.sentences import document_sentences
from ..data.tokenizers import ByteTokenizer
from ..interop.concept_folder import ConceptParts, is_concept
from ..interop.folder import read_folder_config
from ..models import concept as nets
from ..models.sentence_encoder import ENCODER_NAME, sentence_encoder
from ..processes.concept import ConceptDiffusion, EmbeddingScaler
from .concept_config import ConceptTrainConfig
from .optim import build_optimizer, lr_at

TOKENIZER = ByteTokenizer()
CACHE_PREFIX = "embeddings-"  # OUT/embeddings-<split>.safetensors: a split's vectors and a hash of its sentences


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spread(docs: list[list[str]], limit: int, seed: int) -> list[list[str]]:
    """About `limit` sentences from all documents alike: from each a run of consecutive sentences at a seeded place
    (the first `limit` sentences of a corpus would be its first few works)."""
    share, rng = max(limit // max(len(docs), 1), 2), random.Random(seed)
    out = []
    for doc in docs:
        start = rng.randrange(max(len(doc) - share, 0) + 1)
        out.append(doc[start : start + share])
    return [d for d in out if d]


def split_documents(source: str, split: str, limit: int, max_chars: int, seed: int) -> list[list[str]]:
    """The `split` documents of `source` as lists of sentences, about `limit` sentences in all (`spread`)."""
    docs = spread(list(document_sentences(iter_documents(source, split), max_chars)), limit, seed)
    if not docs:
        raise UserError(f"the {split} split of {source!r} has no sentence: give a corpus with text in it")
    return docs


def _digest(sentences: list[str]) -> str:
    return hashlib.sha256("\n".join(sentences).encode("utf-8", "surrogatepass")).hexdigest()


def _cache_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"{CACHE_PREFIX}{split}.safetensors"


def read_cache(folder: str | Path, split: str, sentences: list[str]) -> torch.Tensor | None:
    """The cached MiniLM vectors of `split` in `folder` if they are those of these very sentences (by hash)."""
    path = _cache_path(folder, split)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:  # the header only: a stale cache is not read through
            meta = fh.metadata() or {}
            if meta.get("sentences_sha256") != _digest(sentences) or meta.get("encoder") != ENCODER_NAME:
                return None
            emb = fh.get_tensor("embeddings")
    except (SafetensorError, OSError, KeyError, ValueError):
        return None  # a damaged cache is only a cache: embed again
    return emb if emb.dim() == 2 and emb.shape[0] == len(sentences) else None


def write_cache(folder: str | Path, split: str, sentences: list[str], emb: torch.Tensor) -> None:
    """Cache `emb` (MiniLM's vectors of `sentences`) in `folder`, atomically (a temp file renamed)."""
    path = _cache_path(folder, split)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"embeddings": emb.float().cpu().contiguous()}, str(tmp),
              metadata={"sentences_sha256": _digest(sentences), "encoder": ENCODER_NAME})
    os.replace(tmp, path)


def embed(encode: Encoder, sentences: list[str], split: str, log: Callable[[str], None] = log_stderr
          ) -> torch.Tensor:
    start = time.time()
    emb = encode(sentences).float().cpu()
    log(f"embedded {len(sentences)} {split} sentences in {time.time() - start:.1f}s")
    return emb


def embed_cached(sentences: list[str], folder: str | Path, split: str, device: str | torch.device = "cpu",
                 log: Callable[[str], None] = log_stderr) -> torch.Tensor:
    """MiniLM's vectors [n, E] of `sentences`: from folder's cache of `split`, else embedded and cached there."""
    emb = read_cache(folder, split, sentences)
    if emb is None:
        emb = embed(sentence_encoder(ENCODER_NAME, device), sentences, split, log)
        write_cache(folder, split, sentences, emb)
    return emb


def token_batch(sentences: list[str], max_tokens: int, device: torch.device) -> torch.Tensor:
    """Byte ids of each sentence (at most max_tokens - 1) then [EOS], [PAD]-filled: [B, longest + 1]."""
    rows = [TOKENIZER.encode(s)[: max_tokens - 1] + [TOKENIZER.eos_id] for s in sentences]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [TOKENIZER.pad_id] * (width - len(r)) for r in rows], device=device)


def train_loop(name: str, model: torch.nn.Module, steps: int, lr: float, loss_fn: Callable[[int], torch.Tensor],
               log_every: int, log: Callable[[str], None] = log_stderr) -> list[dict]:
    """AdamW with warm-up (5%) and cosine decay to 10%, gradients clipped at 1; the loss curve every log_every."""
    opt = build_optimizer(model, lr, 0.01, (0.9, 0.99))
    curve, start = [], time.time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, max(steps // 20, 1), steps, 0.1)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            value, seconds = float(loss.detach()), time.time() - start
            curve.append({"step": step + 1, "loss": value, "seconds": round(seconds, 1)})
            log(f"{name} step {step + 1}/{steps} loss {value:.4f} ({seconds:.0f}s)")
    model.eval()
    return curve


def offsets_of(docs: list[list[str]]) -> list[int]:
    """Each document's first sentence's index in the flat list of all sentences."""
    out, total = [], 0
    for d in docs:
        out.append(total)
        total += len(d)
    return out


def windows(docs: list[list[str]], size: int) -> list[tuple[int, int]]:
    """(first sentence's flat index, length) of every window: each sentence but a document's last starts one."""
    out = []
    for doc, off in zip(docs, offsets_of(docs)):
        out.extend((off + i, min(size, len(doc) - i)) for i in range(max(len(doc) - 1, 0)))
    return out


def window_batch(x: torch.Tensor, picks: Iterable[tuple[int, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised windows [B, size, E] (zero-filled past a document's end) and which sentences are real [B, size]."""
    picks = list(picks)
    batch = torch.zeros(len(picks), size, x.shape[1], device=x.device)
    valid = torch.zeros(len(picks), size, dtype=torch.bool, device=x.device)
    for row, (first, n) in enumerate(picks):
        batch[row, :n] = x[first : first + n]
        valid[row, :n] = True
    return batch, valid


def is_concept_folder(folder: Path) -> bool:
    """A concept model's folder, or one that holds only embedding caches (a training stopped before its save)."""
    if folder.is_dir() and all(p.name.startswith(CACHE_PREFIX) and p.suffix == ".safetensors"
                               for p in folder.iterdir()):
        return True
    try:
        return is_concept(read_folder_config(folder))
    except UserError:  # no config.json, or one that is not JSON: not ours to replace
        return False


@dataclass
class ConceptRun:
    """A finished training: the model (saved in `out`), its training sentences and what the loops logged."""

    model: ConceptModel
    out: Path
    train_docs: list[list[str]]
    curves: dict[str, list[dict]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)


def train_concept(cfg: ConceptTrainConfig, out: str | Path, device: str | torch.device = "cpu",
                  encoder: Encoder | None = None, log: Callable[[str], None] = log_stderr) -> ConceptRun:
    """Train a concept model on cfg.source's training split and write it to `out` (module notes). `encoder`
    replaces all-MiniLM-L6-v2 for embedding the training sentences (a test's stand-in); the folder names MiniLM,
    which `ConceptModel` loads to read prompts."""
    out, device = Path(out), torch.device(device)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: give a folder to write the concept model to")
    if out.is_dir() and any(out.iterdir()) and not is_concept_folder(out):  # never replace another model or data
        raise UserError(f"{out} holds something other than a concept model, which training would replace: give a "
                        "new folder (or a concept model's, to train it again)")
    docs = split_documents(cfg.source, "train", cfg.train_sentences, cfg.max_chars, cfg.seed)
    flat, starts = [s for d in docs for s in d], windows(docs, cfg.window)
    if not starts:  # before any work: the denoiser learns a next sentence from the ones before it
        raise UserError(f"{cfg.source!r} has no document of two sentences or more in its training split: give "
                        "documents of several sentences")
    # the cache holds MiniLM's vectors only: a stand-in encoder neither reads nor writes it
    emb = read_cache(out, "train", flat) if encoder is None else None
    if emb is None:
        emb = embed(encoder if encoder is not None else sentence_encoder(ENCODER_NAME, device), flat, "train", log)
        if encoder is None:  # kept at once: a training stopped later does not embed again (minutes on a CPU)
            out.mkdir(parents=True, exist_ok=True)
            write_cache(out, "train", flat, emb)
    scaler = EmbeddingScaler.fit(emb)
    # seeded after embedding: loading the encoder (on a cache miss only) must not move the weights' draws
    torch.manual_seed(cfg.seed)
    rng, gen = random.Random(cfg.seed), torch.Generator(device=device).manual_seed(cfg.seed)
    x = scaler(emb).to(device)
    max_tokens = max(len(TOKENIZER.encode(s)) for s in flat) + 1  # bytes and [EOS]
    dcfg = nets.DecoderConfig(vocab_size=TOKENIZER.vocab_size, embed_dim=emb.shape[1], max_tokens=max_tokens,
                              d_model=cfg.d_model, n_layers=cfg.decoder_layers, n_heads=cfg.heads, prefix=cfg.prefix)
    decoder = nets.SentenceDecoder(dcfg).to(device)

    def decoder_step(step: int) -> torch.Tensor:
        idx = [rng.randrange(len(flat)) for _ in range(cfg.batch)]
        noisy = x[idx] + cfg.decoder_noise * torch.randn(len(idx), x.shape[1], device=device, generator=gen)
        nll, n = nets.decoder_loss(decoder, noisy, token_batch([flat[i] for i in idx], max_tokens, device),
                                   TOKENIZER.pad_id)
        return nll / n

    curves = {"decoder": train_loop("decoder", decoder, cfg.decoder_steps, cfg.lr, decoder_step, cfg.log_every, log)}
    ncfg = nets.ConceptNetConfig(embed_dim=emb.shape[1], d_model=cfg.d_model, n_layers=cfg.context_layers,
                                 denoiser_layers=cfg.denoiser_layers, n_heads=cfg.heads, context=cfg.window)
    denoiser = nets.ConceptDenoiser(ncfg).to(device)
    process = ConceptDiffusion(num_steps=cfg.num_steps, cond_drop=cfg.cond_drop)

    def denoiser_step(step: int) -> torch.Tensor:
        batch, valid = window_batch(x, rng.sample(starts, min(cfg.batch, len(starts))), cfg.window)
        return process.loss(denoiser, batch, process.sample_noise(batch, gen), valid).mean

    curves["denoiser"] = train_loop("denoiser", denoiser, cfg.denoiser_steps, cfg.lr, denoiser_step, cfg.log_every,
                                    log)
    parts = ConceptParts(decoder=decoder, denoiser=denoiser, scaler=scaler, process=process, encoder=ENCODER_NAME,
                         max_chars=cfg.max_chars, training=cfg.to_dict())
    model = ConceptModel(parts, encoder, device)  # None: MiniLM, loaded when first needed

    # the caches in OUT (the training one written as soon as it was made) go into the new folder
    model.save_pretrained(out, extra=lambda tmp: _keep_caches(out, tmp))
    params = {name: sum(p.numel() for p in net.parameters()) for name, net in (("decoder", decoder),
                                                                               ("denoiser", denoiser))}
    return ConceptRun(model=model, out=out, train_docs=docs, curves=curves, params=params)


def _keep_caches(old: Path, new: Path) -> None:
    """Carry the embedding caches of the folder being replaced into its new version (hard links: no copy)."""
    if not old.is_dir():
        return
    for path in old.glob(f"{CACHE_PREFIX}*.safetensors"):
        try:
            os.link(path, new / path.name)
        except OSError:
            new.joinpath(path.name).write_bytes(path.read_bytes())
