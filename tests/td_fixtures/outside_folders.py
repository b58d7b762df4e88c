"""Test fixtures: tiny folders of outside formats (LLaDA, Dream, masked LMs, DiffusionGemma, causal LMs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

# =====================================================================================================================
# fixtures `bpe_tokenizer`, `llama_reference`, `bidirectional_logits`, `write_llada`, `write_dream`,
# `masked_lm_specials`, `write_masked_lm`, `write_diffusion_gemma`
#
# Tiny, randomly initialised checkpoints in outside formats, written offline for the interop tests.
#
# Each builder makes the reference network with transformers' own class (the independent forward the tests
# compare against), then writes its weights under the format's own key names, its config.json fields and a
# tiny HF tokenizer trained here.
# =====================================================================================================================


_BPE_TEXTS = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"] * 4


def _bpe_tokenizer(folder: Path, specials: list[str], vocab_size: int = 300) -> dict[str, int]:
    """A byte-level BPE with `specials` first (ids 0, 1, ...), saved as tokenizer.json; returns token -> id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_BPE_TEXTS, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return {s: tok.token_to_id(s) for s in specials} | {"__size__": tok.get_vocab_size()}


def save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """model.safetensors, or `shards` files named by model.safetensors.index.json (transformers' layout)."""
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if shards <= 1:
        save_file(state, str(folder / "model.safetensors"))
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / file))
        weight_map.update({k: file for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _llama_reference(vocab_rows: int, kv_heads: int = 2, bias: bool = False, qwen: bool = False, seed: int = 0,
                    tied: bool = False):
    """A tiny LlamaForCausalLM (or Qwen2ForCausalLM) with random weights and non-trivial norms."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_rows, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=tied)
    if qwen:
        cfg = transformers.Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common, attention_bias=bias,
                                       rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))  # norms of ones would hide a missing norm weight
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def _bidirectional_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """transformers' forward with a full (all-zero additive) 4D mask: every position sees every other."""
    mask = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


LLADA_BLOCK = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
               "self_attn.o_proj": "attn_out", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ff_norm", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
               "mlp.down_proj": "ff_out"}


def _write_llada(folder: Path, shards: int = 1, dtype: torch.dtype = torch.float32, tied: bool = False):
    """A LLaDA folder (GSAI-ML/LLaDA-8B-Base's config fields and key names); returns (folder, reference, ids).
    `tied`: weight_tying, the output head is wte (the file then holds no ff_out head)."""
    ids = _bpe_tokenizer(folder, ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"])
    rows = ids["__size__"] + 9  # the embedding is padded past the tokenizer, as LLaDA's 126464 > its ids
    ref = _llama_reference(rows, tied=tied)
    state = {}
    for name, value in ref.state_dict().items():
        if name == "model.embed_tokens.weight":
            state["model.transformer.wte.weight"] = value
        elif name == "model.norm.weight":
            state["model.transformer.ln_f.weight"] = value
        elif name == "lm_head.weight":
            if not tied:
                state["model.transformer.ff_out.weight"] = value
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            state[f"model.transformer.blocks.{layer}.{LLADA_BLOCK[module]}.{kind}"] = value
    save_sharded({k: v.to(dtype) for k, v in state.items()}, folder, shards)
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada",
              "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                           "AutoModel": "modeling_llada.LLaDAModelLM"},
              "activation_type": "silu", "alibi": False, "attention_layer_norm": False, "block_type": "llama",
              "d_model": 32, "embedding_size": rows, "vocab_size": rows, "include_bias": False,
              "include_qkv_bias": False, "input_emb_norm": False, "layer_norm_type": "rms",
              "mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
              "pad_token_id": ids["<|endoftext|>"], "max_sequence_length": 24, "mlp_hidden_size": 48,
              "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "rms_norm_eps": 1e-5, "rope": True,
              "rope_theta": 50000.0, "scale_logits": False, "weight_tying": tied, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|startoftext|>",
                                                              "eos_token": "<|endoftext|>"}))
    return folder, ref, ids


def _write_dream(folder: Path, shards: int = 1):
    """A Dream folder (Dream-org/Dream-v0-Base-7B's config fields, Qwen2 key names); (folder, reference, ids)."""
    ids = _bpe_tokenizer(folder, ["<|endoftext|>", "<|beginoftext|>", "<|mask|>"])
    rows = ids["__size__"] + 7
    ref = _llama_reference(rows, qwen=True, seed=1)
    save_sharded(ref.state_dict(), folder, shards)
    config = {"architectures": ["DreamModel"], "model_type": "Dream",
              "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
              "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-5, "rope_theta": 50000.0, "rope_scaling": None, "vocab_size": rows,
              "tie_word_embeddings": False, "mask_token_id": ids["<|mask|>"], "bos_token_id": ids["<|beginoftext|>"],
              "eos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                              "mask_token": "<|mask|>"}))
    return folder, ref, ids


MASKED_LM_SPECIALS = {"bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                      "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                      "modernbert": ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]}


def _write_masked_lm(folder: Path, kind: str):
    """A BERT / RoBERTa / ModernBERT folder written by transformers' own save_pretrained; (folder, ids)."""
    import transformers

    specials = MASKED_LM_SPECIALS[kind]
    ids = _bpe_tokenizer(folder, specials, vocab_size=280)
    pad, cls_, sep, mask = (("[PAD]", "[CLS]", "[SEP]", "[MASK]") if kind != "roberta"
                            else ("<pad>", "<s>", "</s>", "<mask>"))
    common = dict(vocab_size=ids["__size__"] + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, pad_token_id=ids[pad])
    torch.manual_seed(2)
    if kind == "bert":
        model = transformers.BertForMaskedLM(transformers.BertConfig(**common, max_position_embeddings=40))
    elif kind == "roberta":
        model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            **common, max_position_embeddings=42, bos_token_id=ids[cls_], eos_token_id=ids[sep]))
    else:
        model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
            **common, max_position_embeddings=40, global_attn_every_n_layers=2, local_attention=8,
            cls_token_id=ids[cls_], sep_token_id=ids[sep], bos_token_id=ids[cls_], eos_token_id=ids[sep]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": pad, "cls_token": cls_, "sep_token": sep, "mask_token": mask}))
    return folder, ids


def _write_diffusion_gemma(folder: Path, canvas_length: int = 8):
    """A DiffusionGemma folder written by transformers' own save_pretrained (tiny MoE text model, tiny vision
    tower), with a Gemma-like tokenizer (<pad> 0, <eos> 1, <bos> 2, <mask> 4); returns (folder, model, ids)."""
    import transformers

    ids = _bpe_tokenizer(folder, ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], vocab_size=290)
    rows = ids["__size__"] + 6
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64)
    text = dict(vocab_size=rows, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, global_head_dim=8, sliding_window=8,
                layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
                pad_token_id=0, eos_token_id=1, bos_token_id=2, num_experts=4, top_k_experts=2,
                moe_intermediate_size=16)
    cfg = transformers.DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                            boi_token_id=rows - 3, eoi_token_id=rows - 2, image_token_id=rows - 1)
    torch.manual_seed(3)
    model = transformers.DiffusionGemmaForBlockDiffusion(cfg).eval()
    model.save_pretrained(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                              "pad_token": "<pad>", "mask_token": "<mask>"}))
    return folder, model, ids


@pytest.fixture(scope="session")
def bpe_tokenizer() -> Callable[..., dict[str, int]]:
    """bpe_tokenizer(folder, specials, vocab_size=300): a byte-level BPE saved as folder/tokenizer.json."""
    return _bpe_tokenizer


@pytest.fixture(scope="session")
def llama_reference() -> Callable:
    """llama_reference(vocab_rows, kv_heads=2, bias=False, qwen=False, seed=0, tied=False): a tiny random
    LlamaForCausalLM (or Qwen2ForCausalLM)."""
    return _llama_reference


@pytest.fixture(scope="session")
def bidirectional_logits() -> Callable[..., torch.Tensor]:
    """bidirectional_logits(model, ids): transformers' forward with every position seeing every other."""
    return _bidirectional_logits


@pytest.fixture(scope="session")
def write_llada() -> Callable:
    """write_llada(folder, shards=1, dtype=float32, tied=False) -> (folder, reference, ids): a tiny LLaDA folder."""
    return _write_llada


@pytest.fixture(scope="session")
def write_dream() -> Callable:
    """write_dream(folder, shards=1) -> (folder, reference, ids): a tiny Dream folder."""
    return _write_dream


@pytest.fixture(scope="session")
def masked_lm_specials() -> dict[str, list[str]]:
    """The special tokens of each masked-LM kind that `write_masked_lm` writes, in id order."""
    return MASKED_LM_SPECIALS


@pytest.fixture(scope="session")
def write_masked_lm() -> Callable:
    """write_masked_lm(folder, kind) -> (folder, ids): a tiny BERT / RoBERTa / ModernBERT folder."""
    return _write_masked_lm


@pytest.fixture(scope="session")
def write_diffusion_gemma() -> Callable:
    """write_diffusion_gemma(folder, canvas_length=8) -> (folder, model, ids): a tiny DiffusionGemma folder."""
    return _write_diffusion_gemma


