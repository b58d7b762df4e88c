"""Kuleshov-group checkpoints (MDLM, BD3-LM): tiny random folders in their exact Hugging Face format, our DiT
checked against an independent float64 re-derivation of theirs, and the Pipeline run end to end on them."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from textdiffusion.api.pipeline import Pipeline
from textdiffusion.core.errors import InputWarning, UserError
from textdiffusion.interop import kuleshov
from textdiffusion.processes import BlockDiffusion, MaskedDiffusion

# ---- their checkpoint folder, and an independent reference: float64, their formulas written out -----------------

@pytest.fixture(scope="module")
def write_folder(kuleshov_dit):
    """write_folder(folder, kind="mdlm", ...) -> their state: a tiny checkpoint folder in their format."""
    V, L, D, H, N_LAYERS, COND = (kuleshov_dit.V, kuleshov_dit.L, kuleshov_dit.D, kuleshov_dit.H, kuleshov_dit.N_LAYERS,
                                  kuleshov_dit.COND)
    their_state = kuleshov_dit.their_state

    def write_folder(folder: Path, kind: str = "mdlm", time_conditioning: bool = False, adaln: bool = True,
                     block_size: int = 4, weights: str | None = None, **extra) -> dict[str, torch.Tensor]:
        """config.json and model.safetensors as their push_to_hub writes them (no tokenizer files); `weights`:
        the family whose weights go under kind's config.json (a swapped folder), by default kind's."""
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"architectures": [kind.upper()], "cond_dim": COND, "dropout": 0.1, "hidden_dim": D, "model_length": L,
               "model_type": kind, "n_blocks": N_LAYERS, "n_heads": H, "return_dict": False,
               "time_conditioning": time_conditioning, "torch_dtype": "float32", "vocab_size": V,
               "auto_map": {"AutoConfig": f"configuration_{kind}.{kind.upper()}Config",
                            "AutoModelForMaskedLM": f"modeling_{kind}.{kind.upper()}"}}
        if kind == "bd3lm":
            cfg.update({"attn_backend": "sdpa", "block_size": block_size, "cross_attn": True, "var_min": True,
                        "sampling_eps_min": 1e-3, "sampling_eps_max": 0.999})
            if not adaln:
                cfg["adaln"] = False
        cfg.update(extra)
        (folder / "config.json").write_text(json.dumps(cfg))
        weights = weights or kind
        state = their_state(adaln=adaln, bd3lm=weights == "bd3lm", uniform=weights == "duo")
        save_file(state, str(folder / "model.safetensors"))
        return state

    return write_folder


def ref_layernorm(x, w):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w


def ref_rotate(x, pos):
    """x [..., L, hd] at integer positions pos [L]: pair feature i with i + hd/2, angle pos * 10000^(-2i/hd)."""
    hd = x.shape[-1]
    out = x.clone()
    for li, p in enumerate(pos.tolist()):
        for i in range(hd // 2):
            theta = p * 10000.0 ** (-2 * i / hd)
            a, b = x[..., li, i], x[..., li, i + hd // 2]
            out[..., li, i] = a * math.cos(theta) - b * math.sin(theta)
            out[..., li, i + hd // 2] = b * math.cos(theta) + a * math.sin(theta)
    return out


@pytest.fixture(scope="module")
def ref_forward(kuleshov_dit):
    """ref_forward(state, ids, sigma, allowed=None, positions=None, adaln=True): their DiT forward in float64."""
    D, H, N_LAYERS = kuleshov_dit.D, kuleshov_dit.H, kuleshov_dit.N_LAYERS

    def ref_forward(state, ids, sigma, allowed=None, positions=None, adaln=True):
        """Their DiT forward: ids [B, S], sigma [B], allowed [S, S] bool (None: full), positions [S]."""
        s = {k: v.double() for k, v in state.items()}
        b, n = ids.shape
        positions = torch.arange(n) if positions is None else positions
        x = s["backbone.vocab_embed.embedding"][ids]
        c = None
        if adaln:
            freqs = torch.tensor([math.exp(-math.log(10000) * i / 128) for i in range(128)], dtype=torch.float64)
            args = sigma.double()[:, None] * freqs
            feat = torch.cat([args.cos(), args.sin()], -1)
            silu = torch.nn.functional.silu
            h = silu(feat @ s["backbone.sigma_map.mlp.0.weight"].T + s["backbone.sigma_map.mlp.0.bias"])
            c = silu(h @ s["backbone.sigma_map.mlp.2.weight"].T + s["backbone.sigma_map.mlp.2.bias"])
        hd = D // H
        for i in range(N_LAYERS):
            p = f"backbone.blocks.{i}."
            if adaln:
                m = (c @ s[p + "adaLN_modulation.weight"].T + s[p + "adaLN_modulation.bias"])[:, None]
                sh1, sc1, g1, sh2, sc2, g2 = (m[..., k * D:(k + 1) * D] for k in range(6))
            else:
                sh1 = sc1 = sh2 = sc2 = torch.zeros(1, dtype=torch.float64)
                g1 = g2 = torch.ones(1, dtype=torch.float64)
            h = ref_layernorm(x, s[p + "norm1.weight"]) * (1 + sc1) + sh1
            qkv = (h @ s[p + "attn_qkv.weight"].T).view(b, n, 3, H, hd)
            q = ref_rotate(qkv[:, :, 0].transpose(1, 2), positions)
            k = ref_rotate(qkv[:, :, 1].transpose(1, 2), positions)
            v = qkv[:, :, 2].transpose(1, 2)
            scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            o = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v).transpose(1, 2).reshape(b, n, D)
            x = x + g1 * (o @ s[p + "attn_out.weight"].T)
            h = ref_layernorm(x, s[p + "norm2.weight"]) * (1 + sc2) + sh2
            h = h @ s[p + "mlp.0.weight"].T + s[p + "mlp.0.bias"]
            h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
            x = x + g2 * (h @ s[p + "mlp.2.weight"].T + s[p + "mlp.2.bias"])
        h = ref_layernorm(x, s["backbone.output_layer.norm_final.weight"])
        if adaln:
            m = (c @ s["backbone.output_layer.adaLN_modulation.weight"].T
                 + s["backbone.output_layer.adaLN_modulation.bias"])[:, None]
            h = h * (1 + m[..., D:]) + m[..., :D]
        return h @ s["backbone.output_layer.linear.weight"].T + s["backbone.output_layer.linear.bias"]

    return ref_forward


def their_block_mask(n: int, block: int) -> torch.Tensor:
    """BD3-LM's training mask over [x_t ; x0] (2n tokens): block-diagonal within x_t and within x0,
    x_t -> earlier x0 blocks, x0 -> x0 block-causal."""
    allowed = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for qi in range(2 * n):
        for ki in range(2 * n):
            q_clean, k_clean = qi >= n, ki >= n
            bq, bk = (qi % n) // block, (ki % n) // block
            diag = bq == bk and q_clean == k_clean
            offset = bq > bk and k_clean and not q_clean
            causal = bq >= bk and k_clean and q_clean
            allowed[qi, ki] = diag or offset or causal
    return allowed


# ---- tests ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("time_conditioning", [False, True])
def test_mdlm_logits_match_reference(tmp_path, time_conditioning, kuleshov_dit, ref_forward, write_folder):
    state = write_folder(tmp_path, "mdlm", time_conditioning=time_conditioning)
    loaded = kuleshov.load(tmp_path, torch.device("cpu"))
    assert isinstance(loaded.process, MaskedDiffusion) and loaded.process.mask_id == 50257
    assert loaded.tokenizer.vocab_size == kuleshov_dit.V and loaded.model.cfg.time_conditioning is time_conditioning
    ids = torch.randint(0, kuleshov_dit.V, (2, kuleshov_dit.L), generator=torch.Generator().manual_seed(1))
    ids[0, 3:9] = 50257
    t = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        ours = loaded.model(ids, t).double()
    # their sigma: 0 without time conditioning, else -log(1 - mask rate) for our t = mask rate
    sigma = -torch.log1p(-t.double()) if time_conditioning else torch.zeros(2, dtype=torch.float64)
    ref = ref_forward(state, ids, sigma)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), (ours - ref).abs().max()


def test_bd3lm_training_pass_matches_reference_and_cache_is_exact(tmp_path, kuleshov_dit, ref_forward, write_folder):
    state = write_folder(tmp_path, "bd3lm", block_size=4)
    loaded = kuleshov.load(tmp_path, torch.device("cpu"))
    process = loaded.process
    assert isinstance(process, BlockDiffusion) and process.block_size == 4
    assert (process.mask_rate_min, process.mask_rate_max) == (1e-3, 0.999)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 50257, (2, kuleshov_dit.L), generator=g)
    xt = torch.where(torch.rand(2, kuleshov_dit.L, generator=g) < 0.5, torch.full_like(x0, 50257), x0)
    with torch.no_grad():
        ours = process.denoiser_logits(loaded.model, xt, x0).double()
    ref = ref_forward(state, torch.cat([xt, x0], 1), torch.zeros(2), allowed=their_block_mask(kuleshov_dit.L, 4),
                      positions=torch.arange(kuleshov_dit.L).repeat(2))[:, :kuleshov_dit.L]
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), (ours - ref).abs().max()
    pipe = Pipeline(loaded.model, process, loaded.tokenizer, loaded.config)
    a = pipe.generate(num_samples=2, length=kuleshov_dit.L, seed=3, steps=4, cache=True)
    b = pipe.generate(num_samples=2, length=kuleshov_dit.L, seed=3, steps=4, cache=False)
    assert torch.equal(a.ids, b.ids) and (a.ids != 50257).all()


def test_bd3lm_cached_and_uncached_agree_up_to_the_trained_length(tmp_path, kuleshov_dit, write_folder):
    """Past model_length both slide a window of whole blocks, but the cache keeps each block's keys as computed
    in its own window (samplers/block.py): the blocks within the trained length agree, later ones need not (as
    docs/interop.md says: if they come to agree, say so there)."""
    write_folder(tmp_path, "bd3lm", block_size=4)
    pipe = Pipeline.from_pretrained(tmp_path, device="cpu")
    n = kuleshov_dit.L
    a, b = (pipe.generate(num_samples=4, length=n + 8, seed=1, steps=2, cache=c, stop_at_eos=False)
            for c in (True, False))
    assert a.ids.shape == (4, n + 8) and torch.equal(a.ids[:, :n], b.ids[:, :n])
    assert not torch.equal(a.ids[:, n:], b.ids[:, n:])


def test_bd3lm_without_adaln(tmp_path, kuleshov_dit, ref_forward, write_folder):
    state = write_folder(tmp_path, "bd3lm", adaln=False, block_size=8)
    loaded = kuleshov.load(tmp_path, torch.device("cpu"))
    ids = torch.randint(0, kuleshov_dit.V, (1, kuleshov_dit.L), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = loaded.model(ids).double()
    assert torch.allclose(ours, ref_forward(state, ids, torch.zeros(1), adaln=False), atol=2e-4, rtol=1e-4)


def test_pipeline_generate_infill_score_end_to_end(tmp_path, kuleshov_dit, write_folder):
    write_folder(tmp_path, "mdlm")
    pipe = Pipeline.from_pretrained(tmp_path, device="cpu")  # the registry dispatches to kuleshov
    assert pipe.config["format"] == "kuleshov" and pipe.config["model_type"] == "mdlm"
    out = pipe.generate(num_samples=2, steps=8, seed=0)
    assert out.ids.shape == (2, kuleshov_dit.L) and (out.ids != 50257).all()
    assert all(isinstance(s, str) for s in out.texts)
    fill = pipe.infill("Hello[MASK]x3 world", seed=0, steps=4)
    assert fill.ids[0, 0] == 15496 and fill.ids[0, -1] == 995 and len(fill.fills[0]) == 1
    scored = pipe.score("Hello world, this is a test.", t_samples=4)[0]
    assert math.isfinite(scored.nats_per_token) and scored.nats_per_token > 0
    half = Pipeline.from_pretrained(tmp_path, device="cpu", dtype="bf16")  # weights stored float32, held bf16
    assert half.model.vocab_embed.embedding.dtype == torch.bfloat16
    assert half.generate(num_samples=1, steps=4, seed=0).ids.shape == (1, kuleshov_dit.L)


def test_bad_folders_are_one_line_errors(tmp_path, write_folder):
    write_folder(tmp_path / "heads", "mdlm", n_heads=3)
    with pytest.raises(UserError, match="n_heads"):
        kuleshov.load(tmp_path / "heads", torch.device("cpu"))
    write_folder(tmp_path / "vocab", "mdlm", vocab_size=1000)
    with pytest.raises(UserError, match="vocab_size"):
        kuleshov.load(tmp_path / "vocab", torch.device("cpu"))
    write_folder(tmp_path / "tc", "bd3lm", time_conditioning=True)
    with pytest.raises(UserError, match="time-conditioned"):
        kuleshov.load(tmp_path / "tc", torch.device("cpu"))
    assert kuleshov.matches(tmp_path, {"model_type": "bd3lm"}) and not kuleshov.matches(tmp_path, {"format": "x"})


# ---- a config.json of another family than the weights ---------------------------------------------------------

def _load_quietly_or_warned(folder: Path) -> list[str]:
    """Load the folder; the InputWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kuleshov.load(folder, torch.device("cpu"))
    return [str(w.message) for w in caught if issubclass(w.category, InputWarning)]


@pytest.mark.parametrize("config, weights, settings, words", [
    ("duo", "bd3lm", {"time_conditioning": True}, ["model_type 'duo'", "BD3-LM's sampling_eps_min and", "bd3lm"]),
    ("mdlm", "bd3lm", {}, ["model_type 'mdlm'", "they are BD3-LM weights", "block_size"]),
    ("duo", "mdlm", {"time_conditioning": True}, ["output row 50257 is exactly zero", "MDLM or BD3-LM weights"]),
    ("mdlm", "mdlm", {"adaln": False}, ["no adaLN", "adaln false", "restore"]),  # BD3-LM's adaln-less DiT
    ("bd3lm", "bd3lm", {"adaln": False, "edit": {"adaln": True}}, ["says adaln true", "have no", "adaln\": false"]),
    ("bd3lm", "bd3lm", {"edit": {"adaln": False}}, ["says adaln false", "hold adaLN", "adaln\": true"]),
])
def test_swapped_configs_are_refused(tmp_path, write_folder, config, weights, settings, words):
    settings = dict(settings)
    edit = settings.pop("edit", {})  # config.json fields changed after writing the matching folder
    write_folder(tmp_path, config, weights=weights, **settings)
    written = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**written, **edit}))
    with pytest.raises(UserError) as caught:
        kuleshov.load(tmp_path, torch.device("cpu"))
    assert "\n" not in str(caught.value) and all(w in str(caught.value) for w in words), caught.value


@pytest.mark.parametrize("config, weights, extra, words", [
    ("mdlm", "duo", {}, ["[MASK] (id 50257) is trained", "set model_type \"duo\""]),
    ("bd3lm", "mdlm", {}, ["lack the sampling_eps_min/max buffers", "set model_type \"mdlm\""]),
    ("bd3lm", "duo", {}, ["is trained", "; the weights lack the sampling_eps"]),
    ("bd3lm", "bd3lm", {"sampling_eps_min": 0.3, "sampling_eps_max": 0.8}, ["0.3/0.8 differ from the 0.001/0.999"]),
])
def test_hinted_swaps_warn_in_one_line(tmp_path, write_folder, config, weights, extra, words):
    write_folder(tmp_path, config, weights=weights, **extra)
    said = _load_quietly_or_warned(tmp_path)
    assert len(said) == 1 and "\n" not in said[0] and all(w in said[0] for w in words), said


@pytest.mark.parametrize("kind, settings", [("mdlm", {}), ("mdlm", {"time_conditioning": True}), ("bd3lm", {}),
                                            ("bd3lm", {"adaln": False}), ("duo", {"time_conditioning": True})])
def test_matching_folders_load_without_a_warning(tmp_path, write_folder, kind, settings):
    write_folder(tmp_path, kind, **settings)
    assert _load_quietly_or_warned(tmp_path) == []


def test_cli_prints_the_warning_and_the_refusal_on_one_line(tmp_path, write_folder, capfd):
    from textdiffusion.cli import main

    write_folder(tmp_path / "warned", "mdlm", weights="duo")
    assert main(["sample", "--model", str(tmp_path / "warned"), "--steps", "2", "--seed", "0"]) == 0
    said = [line for line in capfd.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(said) == 1 and said[0].startswith("textdiffusion: warning: ") and "is trained" in said[0], said
    write_folder(tmp_path / "refused", "mdlm", weights="bd3lm")
    assert main(["sample", "--model", str(tmp_path / "refused"), "--steps", "2"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("textdiffusion: error: ") and "BD3-LM weights" in err, err
