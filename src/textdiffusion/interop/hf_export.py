"""Export a Pipeline as a folder that both transformers and textdiffusion load.

The folder is our own format (config.json with "format": "textdiffusion", model.safetensors, tokenizer files),
so `Pipeline.from_pretrained` reads it as it reads any of ours, plus the fields transformers needs:
"model_type": "textdiffusion" and "architectures", no "auto_map" (no remote code), the safetensors "pt"
metadata, and a tokenizer_config.json for AutoTokenizer. With `import textdiffusion.interop.hf_model`
done, `AutoModelForMaskedLM.from_pretrained(folder)` gives the same logits as our model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..core.errors import UserError
from ..models import Transformer
from . import folder as ckpt

MODEL_TYPE = "textdiffusion"  # hf_model.MODEL_TYPE, repeated so that exporting does not import transformers
ARCHITECTURE = "TextDiffusionForMaskedLM"
DROP = ("format", "load", "source", "model_type", "architectures")  # loader notes, rewritten below


def export_hf(pipeline, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `pipeline` (a textdiffusion model) to `path` for transformers and for Pipeline.from_pretrained."""
    model = pipeline.model
    if type(model) is not Transformer:
        raise UserError(f"format='hf' exports textdiffusion's own models; this pipeline holds a "
                        f"{type(model).__name__} ({pipeline.config.get('format', 'outside format')}): "
                        "its original folder already is the Hugging Face copy")
    tok = pipeline.tokenizer
    cfg = {k: v for k, v in pipeline.folder_config().items() if k not in DROP}
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in state.items()}
    stored = next(iter(state.values())).dtype
    cfg.update({"model_type": MODEL_TYPE, "architectures": [ARCHITECTURE], "vocab_size": model.cfg.vocab_size,
                "mask_token_id": tok.mask_id, "pad_token_id": tok.pad_id, "bos_token_id": tok.bos_id,
                "eos_token_id": tok.eos_id, "tie_word_embeddings": False,
                "dtype": str(stored).replace("torch.", "")})

    def write(folder: Path) -> None:
        ckpt.write_config(folder, cfg)
        save_file({k: v.cpu().contiguous() for k, v in state.items()}, str(folder / ckpt.WEIGHTS_FILE),
                  metadata={"format": "pt"})  # transformers reads only safetensors files marked "pt"
        tok.save(folder)
        if (folder / "tokenizer.json").is_file():  # for AutoTokenizer (a byte tokenizer has no such file)
            names = getattr(tok, "specials", {})
            tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.cfg.seq_len,
                       **{f"{role}_token": names[role] for role in ("pad", "bos", "eos", "mask") if role in names}}
            (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))

    ckpt.atomic_folder(Path(path), write)
    return Path(path)
