"""DiffusionGemma folders (google/diffusiongemma-*), through transformers' own DiffusionGemmaForBlockDiffusion.

DiffusionGemma is an encoder-decoder canvas model: the encoder reads the prompt (into a KV cache), the
decoder refines a canvas of `canvas_length` tokens (256) with bidirectional attention over the prompt and
the canvas, and reads the previous step's logits (self-conditioning). Its noise is uniform: a canvas
starts as random tokens, not [MASK]s. So it runs with its own sampler, `entropy_bound`
(`samplers/entropy_bound.py`), not with our masked samplers.

The denoiser call here is model(ids [B, L], t, canvas_start=c, self_conditioning=logits): ids[:, :c]
(after a <bos>, which Gemma prompts start with) go to the encoder, whose KV cache is kept while the
prompt is unchanged, and ids[:, c:] are the canvas; the logits
of the canvas positions come from the decoder (soft-capped as in transformers), the prompt positions get
a certain prediction of their own token. Without canvas_start the whole sequence is the canvas.

Likelihood: DiffusionGemma's training objective and its self-conditioned, uniform-state reverse process
define no bound that our NELBO estimator computes, so `score` refuses it in one line (see UniformCanvas).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError
from .base import Loaded

NAME = "diffusion_gemma"
RUNS_WITH = "sampler 'entropy_bound' (its default)"


@dataclass
class CanvasConfig:
    seq_len: int  # prompt + canvases the pipeline lets a call write at once
    vocab_size: int  # the tokenizer's ids: the logits returned
    canvas_length: int
    model_vocab: int
    canvas_model: bool = True
    causal: bool = False
    time_conditioning: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class UniformCanvas:
    """The process of a uniform-state canvas model: only what the pipeline and `entropy_bound` read.

    Not a trainable forward process (hence not in processes/): any other attribute a sampler or the
    likelihood asks for is a one-line UserError that names the sampler that runs."""

    name = "uniform_canvas"
    causal = False
    default_sampler = "entropy_bound"
    exact_likelihood = False
    bound = False  # no likelihood bound our estimator computes: score refuses it

    def __init__(self, vocab_size: int, mask_id: int):
        self.vocab_size, self.mask_id = vocab_size, mask_id

    def config(self) -> dict:
        return {}

    def denoiser(self, model: nn.Module) -> nn.Module:  # Pipeline asks every process for the network samplers call
        return model

    def sample_noise(self, x0, generator=None):
        return {}

    def nelbo_per_sequence(self, model, x0, noise, loss_mask=None):
        raise UserError("DiffusionGemma defines no likelihood bound that textdiffusion can estimate (uniform-state "
                        "canvas with self-conditioning): score / likelihood do not apply; generate with "
                        + RUNS_WITH)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise UserError(f"this sampler needs a masked or discrete diffusion model ({name!r}); DiffusionGemma is a "
                        f"uniform-state canvas model: use {RUNS_WITH}")


class DiffusionGemmaDenoiser(nn.Module):
    def __init__(self, net: nn.Module, cfg: CanvasConfig, bos_id: int):
        super().__init__()
        self.net, self.cfg, self.bos_id = net, cfg, bos_id
        self._prompt: torch.Tensor | None = None  # the last prompt the encoder read, and its KV cache
        self._cache = None

    def _encode(self, prompt: torch.Tensor):
        """The encoder's KV cache of `prompt`, reused while the prompt is unchanged (every step of a canvas):
        the decoder only reads it."""
        if self._prompt is None or self._prompt.shape != prompt.shape or not torch.equal(self._prompt, prompt):
            self._cache = self.net.model.encoder(input_ids=prompt).cache
            self._prompt = prompt.clone()
        return self._cache

    def new_cache(self):
        raise UserError(f"DiffusionGemma keeps its own prompt cache: use {RUNS_WITH}")

    def forward(self, ids: torch.Tensor, t: torch.Tensor | None = None, canvas_start: int | None = None,
                self_conditioning: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if kwargs:
            raise UserError(f"DiffusionGemma keeps its own prompt cache: use {RUNS_WITH}")
        c = 0 if canvas_start is None else int(canvas_start)
        bos = torch.full((ids.shape[0], 1), self.bos_id, dtype=ids.dtype, device=ids.device)
        prompt, canvas = torch.cat([bos, ids[:, :c]], dim=1), ids[:, c:]
        sc = None
        if self_conditioning is not None:  # our logits cover the tokenizer's ids; the model's rows beyond get 0
            sc = self_conditioning[:, c:].float()
            extra = self.cfg.model_vocab - sc.shape[-1]
            if extra > 0:
                sc = torch.cat([sc, sc.new_full((*sc.shape[:2], extra), float("-inf"))], dim=-1)
            sc = sc.to(self.net.lm_head.weight.dtype)
        out = self.net(cache=self._encode(prompt), decoder_input_ids=canvas, self_conditioning_logits=sc).logits
        out = out[..., : self.cfg.vocab_size].float()
        carry = torch.full((*ids[:, :c].shape, self.cfg.vocab_size), -1e4, device=out.device)
        carry.scatter_(-1, ids[:, :c, None], 0.0)  # prompt positions: certain of their own token
        return torch.cat([carry, out], dim=1)


def matches(folder: Path, config: dict) -> bool:
    return config.get("model_type") == "diffusion_gemma"


def _from_pretrained(transformers, folder: Path, dtype: torch.dtype) -> nn.Module:
    """transformers' own loader, its failures and its load report turned into one line: what it could not place
    (missing or unused tensors: the config.json names more or fewer layers than the weights hold) is refused."""
    from safetensors import SafetensorError

    log = transformers.utils.logging
    verbosity = log.get_verbosity()
    log.set_verbosity_error()  # its multi-line report: what it says is raised below in one line
    try:
        net, info = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, trust_remote_code=False, output_loading_info=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"transformers cannot load the weights in {folder} ({' '.join(str(exc).split())[:200]}): "
                        "restore the folder (config.json and model.safetensors as downloaded)") from exc
    finally:
        log.set_verbosity(verbosity)
    missing, unused = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    if missing:  # transformers would fill them with random values
        raise UserError(f"the weights in {folder} lack {len(missing)} of the model's tensors (e.g. {missing[0]}): "
                        "the config.json names more layers or experts than they hold, or the download is "
                        "incomplete; restore the folder")
    if unused:
        raise UserError(f"the weights in {folder} hold {len(unused)} tensors the config.json has no place for "
                        f"(e.g. {unused[0]}): it describes a smaller model than these weights; restore the "
                        "config.json that came with them")
    return net


def load(folder: Path, device: torch.device, dtype: torch.dtype | None) -> Loaded:
    import transformers

    from .tokenizer import folder_tokenizer
    from .weights import MemoryMeter, WeightIndex, build_empty, check_fits, check_shapes

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"transformers cannot read {folder / 'config.json'} ({' '.join(str(exc).split())[:200]}): "
                        "restore it") from exc
    text = config.text_config
    index = WeightIndex(folder)
    dtype = dtype or index.stored_dtype()
    need = check_fits(index, device, dtype)
    from tokenizers import Tokenizer as HFTok

    mask = None  # the placeholder of positions to generate: Gemma's vocabulary has a <mask> token
    with contextlib.suppress(Exception):  # an unreadable tokenizer.json is reported by folder_tokenizer
        mask = HFTok.from_file(str(folder / "tokenizer.json")).token_to_id("<mask>")
    tokenizer = folder_tokenizer(folder, int(text.vocab_size), {
        "mask": mask, "pad": text.pad_token_id, "bos": text.bos_token_id,
        "eos": text.eos_token_id if isinstance(text.eos_token_id, int) else None})
    canvas_length = int(config.canvas_length or 256)
    cfg = CanvasConfig(seq_len=min(int(text.max_position_embeddings), 4 * canvas_length),
                       vocab_size=tokenizer.vocab_size, canvas_length=canvas_length, model_vocab=int(text.vocab_size))
    # sizes first, on an empty model: transformers would otherwise print a report of every tensor and raise
    check_shapes(index, {k: tuple(v.shape) for k, v in build_empty(
        lambda: transformers.DiffusionGemmaForBlockDiffusion(config)).state_dict().items()})
    meter = MemoryMeter(device)
    with meter.measure() as stats:
        # transformers' loader builds on the meta device and fills tensor by tensor, with the model's own ties
        net = _from_pretrained(transformers, folder, dtype).to(device).eval()
    stats.update(weights_bytes=sum(p.numel() * p.element_size() for p in net.parameters()), estimated_bytes=need,
                 dtype=str(dtype).replace("torch.", ""), shards=len(index.files))
    model = DiffusionGemmaDenoiser(net, cfg, tokenizer.bos_id)
    process = UniformCanvas(tokenizer.vocab_size, tokenizer.mask_id)
    out = {"format": NAME, "source": str(folder), "model": cfg.to_dict(), "process": {"name": process.name},
           "load": {"format": NAME, **stats}}
    return Loaded(model, process, tokenizer, out)
