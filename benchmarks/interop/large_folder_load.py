"""Write a random LLaDA-format folder (bf16, 4 shards, ~0.33 GB), then load it with the streaming loader
in the dtype asked for and print the load's time and memory.

usage: python benchmarks/interop/large_folder_load.py FOLDER fp32|bf16   (run under /usr/bin/time -v)"""
import json
import sys
from pathlib import Path

import torch

from textdiffusion import Pipeline

# the tests' own folder writers (tests/td_fixtures/outside_folders.py), so the benchmark reads the same format
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from td_fixtures.outside_folders import (
    _bpe_tokenizer as bpe_tokenizer,  # noqa: E402
    save_sharded,  # noqa: E402
)

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
