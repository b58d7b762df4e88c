"""The front door: load a model folder, then generate, infill and score text.

    pipe = Pipeline.from_pretrained("path/to/model")
    out = pipe.generate(num_samples=3, steps=128, seed=0, return_frames=True)
    out = pipe.infill("The [MASK]x5 of the night")
    [s.bits_per_token for s in pipe.score(["To be, or not to be"])]
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch

from ..core.checks import check_int, check_seed, check_text, resolve_device
from ..core.errors import UserError
from ..core.precision import inference_context, resolve_precision
from ..core.progress import progress_bar
from ..data.tokenizers import Tokenizer
from ..interop import folder as ckpt
from ..models import Transformer
from ..processes import DiffusionProcess
from ..processes.likelihood import LikelihoodResult, nelbo
from ..samplers import FAMILY_SAMPLERS, SAMPLERS, Frame, check_config
from .cost import check_passes, sampler_passes
from .infill import parse_gaps
from .output import GenerationOutput
from .scoring import BLOCK_CHARS, read_text_blocks, score_pieces


class Pipeline:
    def __init__(self, model: Transformer, process: DiffusionProcess, tokenizer: Tokenizer,
                 config: dict | None = None, precision: str = "fp32"):
        self.model, self.process, self.tokenizer = model.eval(), process, tokenizer
        self.config = config or {}
        self.precision = resolve_precision(precision, self.device)

    # ---- loading and saving ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = "auto",
                        use_ema: bool = True, precision: str = "fp32",
                        dtype: str | torch.dtype | None = None) -> Pipeline:
        """Load a folder written by `save_pretrained` or by training (EMA weights when present), or a
        Hugging Face folder of a known outside format (`interop.FORMATS`: LLaDA, Dream, masked LMs, ...).

        `dtype` ("bf16", "fp16", "fp32" or a torch dtype): the weights' dtype in memory; None keeps our
        folders in float32 and outside folders as stored. `self.config["load"]` reports the load's memory."""
        from ..interop import load_folder

        folder = ckpt.resolve_model_dir(path)
        device = resolve_device(device)  # before the weights are read: a wrong device fails at once
        loaded = load_folder(folder, device, dtype=dtype, use_ema=use_ema)
        from .chat import find_chat_template

        loaded.tokenizer.chat_template = find_chat_template(folder)  # the folder's own, if any (api/chat.py)
        return cls(loaded.model, loaded.process, loaded.tokenizer, loaded.config, precision)

    def folder_config(self) -> dict:
        """What config.json holds for this model (without the format marker and the loader's notes)."""
        cfg = {k: v for k, v in self.config.items() if k not in ("format", "load", "source")}
        cfg["model"] = self.model.cfg.to_dict()
        cfg["process"] = {"name": self.process.name, **self.process.config()}
        cfg["tokenizer"] = self.tokenizer.kind
        return cfg

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None,
                        format: str = "textdiffusion") -> Path:
        """Write config.json, model.safetensors (optionally cast, e.g. to bfloat16) and the tokenizer.

        format="hf" also makes the folder one that transformers loads with AutoModelForMaskedLM (after
        `import textdiffusion.interop.hf_model`, which registers the model type); Pipeline reads both."""
        if format not in ("textdiffusion", "hf"):
            raise UserError(f"format must be 'textdiffusion' or 'hf', got {format!r}")
        if not self._own_network():
            raise UserError(f"save_pretrained writes textdiffusion's own models; this pipeline holds a "
                            f"{type(self.model).__name__} read from a {self.config.get('format')!r} folder: "
                            "keep that original folder, which Pipeline.from_pretrained reads")
        if format == "hf" and type(self.model) is not Transformer:
            raise UserError(f"format='hf' writes a masked LM that transformers loads; a {self.process.name} model's "
                            f"{type(self.model).__name__} has no such form: save it with the default format")
        if format == "hf":
            from ..interop.hf_export import export_hf

            return export_hf(self, path, dtype)
        cfg = self.folder_config()
        state = self.model.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in state.items()}

        def write(folder: Path) -> None:
            ckpt.write_config(folder, cfg)
            ckpt.save_weights(state, folder / ckpt.WEIGHTS_FILE)
            self.tokenizer.save(folder)
            if getattr(self.tokenizer, "chat_template", None) is not None:
                from .chat import TEMPLATE_FILE

                (folder / TEMPLATE_FILE).write_text(self.tokenizer.chat_template, encoding="utf-8")

        ckpt.atomic_folder(Path(path), write)
        return Path(path)

    def _own_network(self) -> bool:
        """A network our folder format rebuilds: the Transformer, or the one its family builds (build_network)."""
        if type(self.model) is Transformer:
            return True
        build = getattr(self.process, "build_network", None)  # the class it builds, read from its signature
        return build is not None and type(self.model) is typing.get_type_hints(build).get("return")

    @property
    def seq_len(self) -> int:
        return self.model.cfg.seq_len

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        """bf16 autocast where chosen, and attention kernels that suit changing shapes (core/precision.py)."""
        return inference_context(self.precision, self.device)

    # ---- sampling -------------------------------------------------------------------------
    def _sampler(self, sampler: str | None) -> tuple[str, type, Callable]:
        if sampler is not None and not isinstance(sampler, str):
            raise UserError(f"sampler must be a sampler's name or None, got {sampler!r}")
        sampler = sampler or self.process.default_sampler
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        for own_sampler, (process_name, family) in FAMILY_SAMPLERS.items():
            if (sampler == own_sampler) != (self.process.name == process_name):
                raise UserError(f"sampler {sampler!r} cannot run a {self.process.name!r} model: {family} models use "
                                f"sampler {own_sampler!r}, and sampler {own_sampler!r} needs one")
        return sampler, *SAMPLERS[sampler]

    def max_length(self, sampler: str | None = None) -> int | None:
        """The most tokens `sampler` can write at once: the model's length, or None (no bound) for
        samplers that continue past it (block diffusion, semi-autoregressive)."""
        _, config_cls, _ = self._sampler(sampler)
        return None if getattr(config_cls, "unbounded_length", False) else self.seq_len

    def _config(self, sampler: str | None, options: dict, batch: int, length: int) -> tuple:
        """(sampler name, checked config, function), once the run's memory and time fit (api/cost.py)."""
        sampler, config_cls, fn = self._sampler(sampler)
        options = {k: v for k, v in options.items() if v is not None}
        known = {f.name: f for f in dataclasses.fields(config_cls)}
        unknown = set(options) - set(known)
        if unknown:
            raise UserError(f"sampler {sampler!r} has no option {', '.join(sorted(unknown))}; "
                            f"its options are {', '.join(sorted(known))}")
        if "eos_id" in known and "eos_id" not in options:
            options["eos_id"] = self.tokenizer.eos_id
        if options.get("cache") is False and isinstance(known["cache"].default, str):
            options["cache"] = "none"  # samplers whose cache is a kind ("none", "prefix", "dual"): no cache
        cfg = config_cls(**options)
        check_config(cfg, f"sampler {sampler!r}")
        rows, passes = sampler_passes(cfg)
        if self.process.name in ("diffuser", "edit_flow"):  # an edit canvas grows to the model's length
            length = max(length, self.seq_len)
        sizes = "the number of samples (-n) or the length (--length)" if rows == 1 else \
            "beam x revisions (--option beam=B --option revisions=R) or the number of samples (-n)"
        check_passes(self.model, self.tokenizer.vocab_size, f"sampler {sampler!r}", batch * rows, length, passes,
                     f"lower {sizes}", f"lower the steps (--steps), {sizes}")
        return sampler, cfg, fn

    def _run_sampler(self, x: torch.Tensor, sampler: str, seed: int | None, return_frames: bool,
                     on_step: Callable[[Frame], None] | None, options: dict,
                     progress: bool | None = None) -> tuple:
        sampler, cfg, fn = self._config(sampler, options, *x.shape)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        # in thousandths of the run: every sampler's frames carry t, the fraction of its work left (1 -> 0),
        # while their step counts mean different things (per block, per window, per token)
        bar = progress_bar(progress, desc="sampling", total=1000, percent=True)
        if not bar.disable:
            user_on_step = on_step

            def on_step(frame: Frame) -> None:
                done = min(1000, int((1.0 - frame.t) * 1000))
                if done > bar.n:  # cheap on most steps of a long run
                    bar.set_postfix_str(f"step {frame.step}", refresh=False)
                    bar.update(done - bar.n)
                if user_on_step is not None:
                    user_on_step(frame)

        start = time.perf_counter()
        try:
            with self._autocast():
                result = fn(self.process.denoiser(self.model), self.process, x.to(self.device), cfg, generator=gen,
                            record_frames=return_frames, on_step=on_step)
        finally:
            bar.close()
        return result, time.perf_counter() - start

    def denoise(self, x: torch.Tensor, sampler: str | None = None, seed: int | None = None,
                return_frames: bool = False, on_step: Callable[[Frame], None] | None = None,
                progress: bool | None = None, **sampler_options) -> GenerationOutput:
        """Run a sampler on token ids `x` [B, L]: [MASK] ids are generated, other ids are kept.

        `progress`: progress on stderr (core/progress.py); None shows it once the run has taken a few seconds: a
        bar on a terminal, a line every 5 seconds in a log."""
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
            raise UserError(f"x must be a tensor of token ids [batch, length], got {type(x).__name__}"
                            + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else ""))
        seed = check_seed(seed)
        limit = self.max_length(sampler)
        if x.dim() != 2 or (limit is not None and x.shape[1] > limit) or x.numel() == 0:
            raise UserError(f"x must be [batch, length] with 1 to {limit or 'any number of'} positions, got "
                            f"{tuple(x.shape)}" + ("; samplers 'block' and 'semi_ar' write past the model's length"
                                                   if limit is not None and x.dim() == 2 else ""))
        if x.min() < 0 or x.max() >= self.tokenizer.vocab_size:
            raise UserError(f"x holds ids outside the vocabulary [0, {self.tokenizer.vocab_size})")
        result, seconds = self._run_sampler(x.long(), sampler, seed, return_frames, on_step, sampler_options,
                                            progress)
        ids = result.ids.cpu()
        texts = [self.tokenizer.decode(row.tolist(), mask_char=None) for row in ids]
        return GenerationOutput(texts, ids, result.nfe, seconds, result.frames)

    def generate(self, num_samples: int = 1, length: int | None = None, prompt: str | None = None,
                 sampler: str | None = None, seed: int | None = None, return_frames: bool = False,
                 on_step: Callable[[Frame], None] | None = None, progress: bool | None = None,
                 **sampler_options) -> GenerationOutput:
        """Sample `num_samples` texts of `length` tokens (default: the model's length).

        `prompt` fixes the first tokens; `sampler` defaults to the process's own (ancestral for
        masked diffusion, ar for the autoregressive baseline); sampler options (steps, temperature,
        top_p, cache, ...) go to the sampler's config. `progress`: progress on stderr (None: once sampling has
        taken a few seconds, a bar on a terminal, a line every 5 seconds in a log).
        """
        num_samples = check_int("num_samples", num_samples, minimum=1)
        length = self.seq_len if length is None else check_int("length", length)
        seed = check_seed(seed)
        if prompt is not None:
            check_text("prompt", prompt)
        limit = self.max_length(sampler)
        if length <= 0 or (limit is not None and length > limit):
            raise UserError(f"length must be from 1 to the model's {self.seq_len} tokens, got {length}"
                            + ("" if length <= 0 else ": samplers 'block' and 'semi_ar' write longer texts"))
        self._config(sampler, sampler_options, num_samples, length)  # refused before the batch is allocated
        x = torch.full((num_samples, length), self.tokenizer.mask_id, dtype=torch.long)
        if prompt is not None:
            ids = self.tokenizer.encode(prompt)
            if not ids:
                raise UserError("the prompt is empty: give some text or leave the prompt out")
            if len(ids) >= length:
                raise UserError(f"the prompt is {len(ids)} tokens, which leaves no room in {length}: "
                                f"shorten it or raise --length (the model's length is {self.seq_len})")
            x[:, : len(ids)] = torch.tensor(ids)
        return self.denoise(x, sampler, seed, return_frames, on_step, progress, **sampler_options)

    def encode_gapped(self, text: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Token ids for `text` with [MASK] ids in its gaps, and each gap's (start, end) span.

        BPE tokens carry their leading space, so with a non-byte tokenizer one space just before
        a gap belongs to the gap ("The [MASK]x5 of" lets the gap's first token be " night").
        """
        parts = parse_gaps(check_text("text", text))
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for i, part in enumerate(parts):
            if isinstance(part, int):
                spans.append((len(ids), len(ids) + part))
                ids.extend([self.tokenizer.mask_id] * part)
                continue
            before_gap = i + 1 < len(parts) and isinstance(parts[i + 1], int)
            if before_gap and self.tokenizer.kind != "byte" and part.endswith(" "):
                part = part[:-1]
            ids.extend(self.tokenizer.encode(part))
        if len(ids) > self.seq_len:
            raise UserError(f"text and gaps come to {len(ids)} tokens, more than the model's {self.seq_len}: "
                            "shorten the text or the gaps")
        return torch.tensor(ids, dtype=torch.long), spans

    def infill(self, text: str, num_samples: int = 1, sampler: str | None = None, seed: int | None = None,
               return_frames: bool = False, on_step: Callable[[Frame], None] | None = None,
               progress: bool | None = None, **sampler_options) -> GenerationOutput:
        """Fill the [MASK] / [MASK]xN gaps of `text` using the context on both sides."""
        num_samples = check_int("num_samples", num_samples, minimum=1)
        seed = check_seed(seed)
        ids, spans = self.encode_gapped(text)
        out = self.denoise(ids[None].repeat(num_samples, 1), sampler, seed, return_frames, on_step, progress,
                           **sampler_options)
        out.fills = [[self.tokenizer.decode(row[a:b].tolist(), mask_char=None) for a, b in spans] for row in out.ids]
        return out

    def chat(self, messages: Sequence[dict], max_new_tokens: int | None = None, num_samples: int = 1,
             sampler: str | None = None, seed: int | None = None, return_frames: bool = False,
             on_step: Callable[[Frame], None] | None = None, progress: bool | None = None, **sampler_options):
        """Reply to a conversation, [{"role": "user", "content": ...}, ...], under the model's chat template.

        The reply is written in `max_new_tokens` positions after the templated prompt (default: the rest of
        the model's length) and ends at the first [EOS]. Sampler options as for `generate`, plus `cfg_scale`
        (classifier-free guidance on the prompt). Returns `chat.ChatReply` (.replies, .prompt_length, .output)."""
        from .chat import chat_reply

        return chat_reply(self, messages, max_new_tokens, num_samples, sampler, seed, return_frames, on_step,
                          progress, **sampler_options)

    def edit(self, text: str, steps: int = 10, num_samples: int = 1, sampler: str | None = None,
             seed: int | None = None, return_frames: bool = False, on_step: Callable[[Frame], None] | None = None,
             progress: bool | None = None, **sampler_options) -> GenerationOutput:
        """Revise `text` with an edit model (process 'diffuser' or 'edit_flow'), so the length changes freely.
        DiffusER: `steps` revision steps, each tagging every token KEEP / DELETE / REPLACE and every gap with a
        number of insertions, then writing the new tokens; options of sampler 'edit': temperature, top_p, beam and
        revisions (2-D beam search), t_start, min_edits (1: greedy with at least one edit per step), start
        ('input' by default; 'random' or 'null' ignore the text).
        Edit Flows: `steps` Euler steps of the insert / delete / substitute CTMC from the text at time t_start
        (option, default 0) to 1. Frames carry their edits."""
        if self.process.name not in ("diffuser", "edit_flow"):
            raise UserError(f"edit needs an edit model (process 'diffuser' or 'edit_flow'), not a "
                            f"{self.process.name!r} model: train one with `textdiffusion train --config tiny "
                            "process.name=diffuser`")
        num_samples = check_int("num_samples", num_samples, minimum=1)
        ids = self.tokenizer.encode(check_text("text", text))
        if not ids or len(ids) > self.seq_len - 1:
            raise UserError(f"the text is {len(ids)} tokens; this edit model revises 1 to {self.seq_len - 1}: "
                            "shorten it")
        sampler_options.setdefault("start", "input")
        x = torch.tensor(ids, dtype=torch.long)[None].repeat(num_samples, 1)
        return self.denoise(x, sampler or self.process.default_sampler, seed, return_frames, on_step, progress,
                            steps=steps, **sampler_options)

    # ---- likelihood -----------------------------------------------------------------------
    def _check_bound(self) -> None:
        """Edit models train on a loss that bounds no likelihood (DiffusER's cross-entropies, Edit Flows' Bregman
        objective): scoring them would print a number that is not an NLL."""
        if not getattr(self.process, "bound", True):
            raise UserError(f"a {self.process.name!r} model has no likelihood bound to score texts with: score with "
                            "a masked, D3PM, SEDD, block or autoregressive model")

    def likelihood(self, chunks: torch.Tensor, t_samples: int = 8, seed: int = 0, batch_size: int = 16,
                   loss_mask: torch.Tensor | None = None) -> LikelihoodResult:
        """Per-token NLL of token-id chunks [N, L] (a bound for diffusion, exact for AR).

        With `loss_mask`, only those positions are scored, conditioned on the rest (infilling)."""
        self._check_bound()
        if not isinstance(chunks, torch.Tensor) or chunks.dim() != 2 or chunks.numel() == 0 \
                or chunks.is_floating_point():
            raise UserError("chunks must be a non-empty tensor of token ids [N, L]")
        if chunks.shape[1] > self.seq_len:
            raise UserError(f"chunks are {chunks.shape[1]} tokens long, more than the model's {self.seq_len}")
        t_samples = check_int("t_samples", t_samples, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        seed = check_int("seed", seed)
        with self._autocast():
            return nelbo(self.model, self.process, chunks, t_samples=t_samples, batch_size=batch_size,
                         seed=seed, loss_mask=loss_mask)

    def score(self, texts: str | Sequence[str], t_samples: int = 32, seed: int = 0, batch_size: int = 16,
              progress: bool | None = None) -> list[LikelihoodResult]:
        """Each text's negative log-likelihood per token: an upper bound (NELBO, Monte Carlo over t)
        for diffusion models, exact for the autoregressive baseline (`result.exact`).

        Texts longer than the model are cut into consecutive windows of its length, scored
        `batch_size` windows at a time; `stderr` is the Monte Carlo error of the whole text's bound.
        For a file, `score_file` reads it piece by piece in bounded memory.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or isinstance(texts, (bytes, bytearray)):
            raise UserError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            check_text(f"texts[{i}]", text)
        return [self.score_stream([text], t_samples, seed, batch_size, progress, size=len(text)) for text in texts]

    def score_file(self, path: str | Path, t_samples: int = 32, seed: int = 0, batch_size: int = 16,
                   progress: bool | None = None, block_chars: int = BLOCK_CHARS) -> LikelihoodResult:
        """`score` of a file's text, read `block_chars` characters at a time: memory stays bounded however
        large the file. Undecodable bytes count as U+FFFD. The result equals score(path.read_text())."""
        self._check_bound()
        path = Path(path)
        if not path.is_file():
            raise UserError(f"file {path} not found")
        block_chars = check_int("block_chars", block_chars, minimum=1)
        return score_pieces(self, read_text_blocks(path, block_chars), t_samples, seed, batch_size, progress,
                            size=os.path.getsize(path), what=f"file {path}")

    def score_stream(self, pieces: Iterable[str], t_samples: int = 32, seed: int = 0, batch_size: int = 16,
                     progress: bool | None = None, size: int | None = None) -> LikelihoodResult:
        """`score` of the text that `pieces` make when joined, scored as the pieces arrive: only the
        current piece and under a batch of windows are held. Cut the pieces before a whitespace that
        follows a word (as `read_text_blocks` does) so that the tokens are those of the whole text.
        `size`: the total number of characters, if known, for the progress bar's estimate."""
        self._check_bound()
        if isinstance(pieces, (str, bytes, bytearray)) or not isinstance(pieces, Iterable):
            raise UserError(f"pieces must be an iterable of str (e.g. a list or a generator), "
                            f"got {type(pieces).__name__}")

        def counted() -> Iterator[tuple[str, int]]:
            read = 0
            for i, piece in enumerate(pieces):
                read += len(check_text(f"piece {i}", piece))
                yield piece, read

        return score_pieces(self, counted(), t_samples, seed, batch_size, progress, size=size, what="the text")
