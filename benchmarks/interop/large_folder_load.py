"""Write a random LLaDA-format folder (bf16, 4 shards, ~0.33 GB), then load it with the streaming loader
in the dtype asked for and print the load's time and memory.

usage: python benchmarks/interop/large_folder_load.py FOLDER fp32|bf16   (run under /usr/bin/time -v)"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from textdiffusion import Pipeline

TEXTS = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"] * 4


def bpe_tokenizer(folder: Path, specials: list[str], vocab_size: int = 300) -> dict[str, int]:
    """A byte-level BPE with `specials` first (ids 0, 1, ...), saved as tokenizer.json; returns token -> id
    (as the tests' `bpe_tokenizer` fixture, tests/conftest.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return {s: tok.token_to_id(s) for s in specials} | {"__size__": tok.get_vocab_size()}


def save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """`shards` files named by model.safetensors.index.json (transformers' layout), as tests/conftest.py's."""
    state = {k: v.detach().contiguous() for k, v in state.items()}
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / file))
        weight_map.update({k: file for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


folder, dtype = Path(sys.argv[1]), sys.argv[2]
if not (folder / "config.json").exists():
    ids = bpe_tokenizer(folder, ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"])
    rows, d, ff, layers = 32000, 1024, 2816, 8
    g = torch.Generator().manual_seed(0)
    state = {"model.transformer.wte.weight": torch.randn(rows, d, generator=g).bfloat16(),
             "model.transformer.ln_f.weight": torch.ones(d).bfloat16(),
             "model.transformer.ff_out.weight": torch.randn(rows, d, generator=g).bfloat16() * 0.02}
    for i in range(layers):
        p = f"model.transformer.blocks.{i}."
        for n, shape in (("q_proj", (d, d)), ("k_proj", (d, d)), ("v_proj", (d, d)), ("attn_out", (d, d)),
                         ("ff_proj", (ff, d)), ("up_proj", (ff, d)), ("ff_out", (d, ff))):
            state[p + n + ".weight"] = (torch.randn(*shape, generator=g) * 0.02).bfloat16()
        state[p + "attn_norm.weight"] = torch.ones(d).bfloat16()
        state[p + "ff_norm.weight"] = torch.ones(d).bfloat16()
    save_sharded(state, folder, 4)
    del state
    cfg = {"model_type": "llada", "d_model": d, "n_heads": 16, "n_kv_heads": 16, "n_layers": layers,
           "mlp_hidden_size": ff, "vocab_size": rows, "embedding_size": rows, "mask_token_id": ids["<|mdm_mask|>"],
           "eos_token_id": ids["<|endoftext|>"], "max_sequence_length": 256, "rope_theta": 500000.0,
           "rms_norm_eps": 1e-5, "weight_tying": False, "block_type": "llama"}
    (folder / "config.json").write_text(json.dumps(cfg))

pipe = Pipeline.from_pretrained(folder, device="cpu", dtype=dtype)
print(json.dumps(pipe.config["load"], indent=1))
