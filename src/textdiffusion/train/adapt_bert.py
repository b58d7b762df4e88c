"""BERT -> diffusion (DiffusionBERT, He et al., 2023): start a masked denoiser from a pretrained encoder.

A masked LM already predicts each [MASK] from both sides, which is the x0 prediction of absorbing diffusion; what
it lacks is practice at high mask rates (BERT saw 15%). So the encoder trains on with our masked process (MDLM's
NELBO, log-linear schedule) at every rate t ~ U[0, 1]; `process.name=masked-spindle` trains it with DiffusionBERT's
spindle schedule instead (processes/spindle.py: informative tokens masked earlier, the schedule fitted to the
training corpus's token counts by train/spindle_fit.py). The network is transformers' own masked-LM class for the
folder's config (BERT, RoBERTa, ModernBERT, ...), loaded with `from_pretrained` (no download). A folder of the bare
encoder (e.g. a sentence-transformers checkpoint, `BertModel`) has no MLM head: transformers then initialises the
head's transform and bias, and its decoder starts as the word embeddings (BERT's tying), which is what such a start
can offer. The head is untied afterwards so the checkpoint stores plain tensors.

The tokenizer is the folder's ([CLS] as [BOS], [SEP] as [EOS], its [MASK] and [PAD]); the run folder is a
textdiffusion checkpoint with model "arch": "hf_masked_lm" (interop/adapted.py). `scratch=True` trains the same
network from transformers' random initialisation: the baseline of the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.errors import UserError
from ..data.tokenizers import META_FILE
from ..interop.adapted import AdaptedMaskedLMConfig, untie_head
from ..interop.masked_lm import MaskedLMDenoiser
from .adapt import refuse_sharded_start
from .config import Config
from .trainer import Trainer


def _hf_config(folder: Path):
    import transformers

    from ..interop.masked_lm import _masked_lm_types

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"transformers cannot read {folder / 'config.json'} ({' '.join(str(exc).split())[:200]}): "
                        "pass a BERT-style model folder") from exc
    if config.model_type not in _masked_lm_types():
        raise UserError(f"{folder} is a {config.model_type!r} model, which has no masked-LM class in transformers")
    return config, getattr(transformers, _masked_lm_types()[config.model_type])


class BertStartTrainer(Trainer):
    """The trainer on a transformers masked LM started from `source` (module notes); masked process only."""

    def __init__(self, cfg: Config, source: str | Path, resume: bool = False, scratch: bool = False):
        refuse_sharded_start(cfg, "adapt")
        if cfg.process.name not in ("masked", "masked-spindle") or cfg.process.extra.get("logit_shift", False):
            raise UserError("a BERT start trains process.name=masked (or masked-spindle) without a logit shift "
                            "(it predicts in place)")
        self.source, self.resuming, self.scratch = Path(source), resume, scratch
        self.hf_config, self.hf_class = _hf_config(self.source)
        positions = int(getattr(self.hf_config, "max_position_embeddings", 512))
        if cfg.data.seq_len > positions - 2:  # RoBERTa-style position offsets need two spare positions
            raise UserError(f"data.seq_len {cfg.data.seq_len} exceeds what {source} can place ({positions - 2} "
                            "tokens): lower data.seq_len")
        tok_dir = Path(cfg.run.out_dir) / "tokenizer"
        if not (tok_dir / META_FILE).is_file():
            from ..interop.tokenizer import folder_tokenizer

            tok = folder_tokenizer(self.source, int(self.hf_config.vocab_size),
                                   {"mask": None, "pad": getattr(self.hf_config, "pad_token_id", None)})
            # a sentence-embedding tokenizer.json cuts every text to 128 tokens and pads it to 128: the corpus
            # would shrink to each document's first 128 tokens (and a short text would score with [PAD]s)
            tok.tok.no_truncation()
            tok.tok.no_padding()
            tok.save(tok_dir)
        cfg.data.tokenizer = str(tok_dir)
        super().__init__(cfg, resume=resume)
        if not resume:
            self._log({"step": 0, "started_from": "scratch" if scratch else str(self.source)})

    def build_model(self) -> tuple[AdaptedMaskedLMConfig, MaskedLMDenoiser]:
        if self.resuming or self.scratch:
            torch.manual_seed(self.cfg.train.seed)
            net = self.hf_class(self.hf_config)
        else:
            net = self.hf_class.from_pretrained(str(self.source), local_files_only=True, dtype=torch.float32)
        untie_head(net)
        hf = net.config.to_dict()
        for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
            hf.pop(key, None)
        hf = json.loads(json.dumps(hf))  # as config.json stores it (id2label's int keys become strings): --resume
        model_cfg = AdaptedMaskedLMConfig(seq_len=self.cfg.data.seq_len, vocab_size=self.tok.vocab_size,
                                          model_type=net.config.model_type, hf_config=hf)
        return model_cfg, MaskedLMDenoiser(net.train(), model_cfg)
