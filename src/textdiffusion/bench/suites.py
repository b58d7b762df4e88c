"""The benchmark suites: which families, tokenizations, budgets and sampler settings are compared.

Every family in a suite trains the same backbone on the same packed chunks for the same number of
tokens; only `process` (and a family's own model switches, such as time conditioning for uniform
noise) differ. A family added later plugs in as one `Family` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import UserError


@dataclass(frozen=True)
class SamplerSetting:
    """One point of a speed-quality sweep: a sampler and its options."""

    sampler: str
    options: dict = field(default_factory=dict)
    label: str = ""

    def name(self) -> str:
        if self.label:
            return self.label
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.sampler}({opts})" if opts else self.sampler


@dataclass(frozen=True)
class Family:
    name: str
    process: dict  # the config's process section
    settings: tuple[SamplerSetting, ...]  # sampler settings, swept for the speed-quality table
    model: dict = field(default_factory=dict)  # model-section overrides this family needs
    only: tuple[str, ...] = ()  # tokenizations it can run with (empty: all)
    infill: dict = field(default_factory=dict)  # options of the default sampler for the infilling accuracy
    infills: bool = True  # False: the family cannot fill a gap (latent models encode the whole passage)

    def runs_with(self, tokenization: str) -> bool:
        return not self.only or tokenization in self.only


@dataclass(frozen=True)
class Tokenization:
    name: str
    data: dict  # data-section overrides
    note: str = ""
    train: dict = field(default_factory=dict)  # train-section overrides (the budget in this tokenization)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tokenizations: tuple[Tokenization, ...]
    families: tuple[Family, ...]
    base: dict  # config sections shared by every run (data, model, train, run)
    num_samples: int = 16  # generated per sampler setting, judged and measured for diversity
    sample_batch: int = 8  # samples per generate() call (tokens/s is measured at this batch)
    single_samples: int = 4  # then generated one at a time: tokens/s of a single sequence (latency)
    min_timing_s: float = 0.0  # each timed pass is repeated until this much time is spent, the fastest kept
    val_chunks: int = 64  # held-out chunks for test perplexity
    t_samples: int = 8  # Monte Carlo draws of t per chunk for the diffusion bounds
    infill_spans: tuple[int, ...] = (4, 16)  # masked span lengths (tokens)
    infill_examples: int = 32  # held-out windows per span length
    # "ar": the suite's AR judge of the same tokenization -- an autoregressive model trained apart from the AR
    # baseline (seed `judge_seed`, `judge_budget` times the suite's steps) that generates nothing, so no row is
    # judged by the model that wrote it; or a load_judge spec (smollm2, a folder, a .gguf file)
    judge: str = "ar"
    judge_seed: int = 1
    judge_budget: float = 2.0
    neutral_judges: tuple[str, ...] = ()  # extra judges scored where installed (e.g. "smollm2"), skipped if not
    mauve_features: str | None = None  # MAUVE's featurizer: "smollm2" (where installed), "bytes" (tests), None

    def family(self, name: str) -> Family:
        for fam in self.families:
            if fam.name == name:
                return fam
        raise UserError(f"suite {self.name!r} has no family {name!r}: it has "
                        f"{', '.join(f.name for f in self.families)}")


def _steps_sweep(steps: tuple[int, ...], **options) -> tuple[SamplerSetting, ...]:
    return tuple(SamplerSetting("ancestral", {"steps": s, **options}) for s in steps)


AR = Family("ar", {"name": "autoregressive"}, (SamplerSetting("ar", {"cache": True}, "ar (KV cache)"),
                                                SamplerSetting("ar", {"cache": False}, "ar (no cache)")))


def mdlm(steps: tuple[int, ...], fast: tuple[SamplerSetting, ...] = ()) -> Family:
    """MDLM's ancestral sampler at each step count, then the parallel decoders of issue 5 (`fast`)."""
    return Family("mdlm", {"name": "masked", "schedule": "loglinear"}, (*_steps_sweep(steps), *fast))


def parallel_decoding(seq_len: int, full: bool = True) -> tuple[SamplerSetting, ...]:
    """The masked model's other samplers (issue 5): LLaDA confidence decoding and Fast-dLLM threshold
    decoding with its caches (semi-AR blocks of seq_len/4), ReMDM, first-hitting, and no-cache
    ancestral for reference. `full=False` keeps one of each kind (the quick suite)."""
    block = seq_len // 4
    confidence = [SamplerSetting("confidence", {"steps": seq_len // d, "block_length": block}) for d in (2, 4)]
    threshold = [SamplerSetting("threshold", {"threshold": th, "block_length": block, "cache": cache})
                 for th, cache in ((0.9, "dual"), (0.7, "none"), (0.7, "dual"), (0.5, "dual"))]
    # ranked by the top probability, not the drawn value's: no lean to the mode (samplers/unmasking.py)
    threshold += [SamplerSetting("threshold", {"threshold": th, "block_length": block, "cache": "dual", "score": "top"})
                  for th in (0.9, 0.5)]
    # a fixed dyadic order, never two neighbours in one pass: log2(block) + 1 passes per block
    dilated = [SamplerSetting("confidence", {"remasking": "dilated", "block_length": block, "cache": cache})
               for cache in ("none", "dual")] + [SamplerSetting("confidence", {"remasking": "dilated"})]
    remdm = [SamplerSetting("remdm", {"steps": seq_len, "schedule": "loop"}),
             SamplerSetting("remdm", {"steps": 4 * seq_len, "schedule": "cap"})]
    others = [SamplerSetting("first_hitting"),
              SamplerSetting("ancestral", {"steps": seq_len, "cache": False}, f"ancestral(steps={seq_len}, no cache)")]
    if not full:
        return confidence[0], threshold[2], remdm[0], others[0]
    return (*confidence, *threshold, *dilated, *remdm, *others)


def bd3(block_size: int, steps: tuple[int, ...], only: tuple[str, ...] = (), thresholds: tuple[float, ...] = (0.9,),
        scores: tuple[str, ...] = ("sampled",), dilated: bool = False) -> Family:
    """Block diffusion at one block size: ancestral steps per block, the dilated order (`dilated`), and threshold
    decoding at each threshold (a higher one spends more passes per block for likelier text) and confidence
    score, with the KV cache."""
    settings = tuple(SamplerSetting("block", {"steps": s}) for s in steps)
    settings += (SamplerSetting("block", {"rule": "dilated"}),) if dilated else ()
    threshold = tuple(SamplerSetting("block", {"rule": "threshold", "threshold": th,
                                               **({} if score == "sampled" else {"score": score})})
                      for score in scores for th in thresholds)
    no_cache = SamplerSetting("block", {"steps": steps[0], "cache": False})
    return Family(f"bd3-{block_size}", {"name": "block", "block_size": block_size},
                  (*settings, *threshold, no_cache), only=only)


def d3pm(transition: str, steps: tuple[int, ...], only: tuple[str, ...] = ()) -> Family:
    """D3PM's ancestral sampler at strided step counts; infills with the largest (its default, all
    T = 1000 steps, would cost 8x MDLM's 128 for the same accuracy column)."""
    return Family(f"d3pm-{transition}", {"name": "d3pm", "transition": transition},
                  tuple(SamplerSetting("d3pm", {"steps": s}) for s in steps), only=only,
                  infill={"steps": max(steps)})


def sedd(graph: str, steps: tuple[int, ...]) -> Family:
    settings = tuple(SamplerSetting("sedd_analytic", {"steps": s}) for s in steps)
    return Family(f"sedd-{graph}", {"name": "sedd", "graph": graph},
                  (*settings, SamplerSetting("sedd", {"steps": max(steps)}, f"sedd euler(steps={max(steps)})")),
                  infill={"steps": max(steps)})


def discrete_families(steps: tuple[int, ...]) -> tuple[Family, ...]:
    """Issue 4's families; the embedding-distance D3PM's default neighbour table is byte-level only."""
    return (d3pm("absorbing", steps), d3pm("uniform", steps), d3pm("embedding", steps, only=("byte",)),
            sedd("absorb", steps), sedd("uniform", steps))


def diffusion_lm(steps: tuple[int, ...]) -> Family:
    """Continuous embedding diffusion (issue 15): Diffusion-LM's defaults (sqrt schedule, T = 2000, 16-wide
    learned embeddings, L_e2e_simple), ancestral steps with clamping at each step count, then deterministic
    DDIM and no clamping at the largest; infills with the middle step count (128 in `small`, MDLM's default)."""
    most = max(steps)
    settings = (*(SamplerSetting("gaussian", {"steps": s}) for s in steps),
                SamplerSetting("gaussian", {"steps": most, "eta": 0.0}, f"gaussian ddim(steps={most})"),
                SamplerSetting("gaussian", {"steps": most, "clamp": False}, f"gaussian(steps={most}, no clamp)"))
    return Family("diffusion-lm", {"name": "gaussian"}, settings, infill={"steps": sorted(steps)[len(steps) // 2]})


def cdcd(steps: tuple[int, ...]) -> Family:
    """The same Gaussian process with CDCD-style score interpolation (token logits + the Gaussian likelihood,
    cross-entropy training, normalised embeddings); ancestral steps, and DDIM at the largest."""
    most = max(steps)
    settings = (*(SamplerSetting("gaussian", {"steps": s}) for s in steps),
                SamplerSetting("gaussian", {"steps": most, "eta": 0.0}, f"gaussian ddim(steps={most})"))
    return Family("cdcd", {"name": "gaussian", "prediction": "tokens", "objective": "ce"}, settings,
                  infill={"steps": sorted(steps)[len(steps) // 2]})


def latent(steps: tuple[int, ...], ae_steps: int, only: tuple[str, ...] = ()) -> Family:
    """Latent diffusion (issue 35, LD4LG / PLANNER): the first `ae_steps` of the suite's budget train the
    autoencoder (2 encoder and 2 decoder blocks, 16 latents of width 32), the rest the denoiser (the backbone's
    blocks) over its latents; ancestral steps at each count, then DDIM at the largest, all with the greedy
    decoder of LD4LG, then the middle count with the decoder sampling at temperature 1. Its bound covers whole
    passages (the VAE bound with the Gaussian chain's), so it has a test NLL but no infilling columns: the
    latents encode every token, and the sampler continues a prefix but fills no gap. `ae_steps` counts in the
    suite's steps, so `only` keeps it off a tokenization whose budget is shorter."""
    most, middle = max(steps), sorted(steps)[len(steps) // 2]
    settings = (*(SamplerSetting("latent", {"steps": s}) for s in steps),
                SamplerSetting("latent", {"steps": most, "eta": 0.0}, f"latent ddim(steps={most})"),
                # the decoder is greedy by default (LD4LG); sampled at temperature 1 as the token families are
                SamplerSetting("latent", {"steps": middle, "temperature": 1.0},
                               f"latent(steps={middle}, decoder temperature 1)"))
    process = {"name": "latent", "num_latents": 16, "latent_dim": 32, "encoder_layers": 2, "decoder_layers": 2,
               "resampler_layers": 2, "ae_steps": ae_steps, "latent_noise": 0.1, "latent_dropout": 0.1,
               "word_dropout": 0.3, "prediction": "v", "self_condition": True, "cond_drop": 0.1}
    return Family("latent", process, settings, only=only, infills=False)


def edit_families(revisions: tuple[int, ...], euler: tuple[int, ...]) -> tuple[Family, ...]:
    """Issue 16's edit families, generating unconditionally: DiffusER (its defaults; revision steps of the
    'edit' sampler from random tokens, the start its forward process ends near) and Edit Flows (its defaults:
    from the empty sequence, Euler steps of the edit CTMC). Neither loss bounds a likelihood: their rows have
    no test NLL and no infilling columns, only generation."""
    diffuser = Family("diffuser", {"name": "diffuser"}, tuple(SamplerSetting("edit", {"steps": s}) for s in revisions))
    flow = Family("edit-flow", {"name": "edit_flow"}, tuple(SamplerSetting("edit_flow", {"steps": s}) for s in euler))
    return diffuser, flow


BYTE = Tokenization("byte", {"tokenizer": "byte"}, "bytes (256 + 4 specials): bits per character")


def bpe(vocab_size: int, **train) -> Tokenization:
    return Tokenization(f"bpe{vocab_size}", {"tokenizer": "bpe", "vocab_size": vocab_size},
                        f"byte-level BPE trained on the training split, {vocab_size} tokens", train)


SMALL_BD3_THRESHOLDS = (0.99, 0.9, 0.7)  # threshold decoding from near-sequential to a few tokens per pass
SMALL_BD3_SCORES = ("sampled", "top")  # Fast-dLLM's drawn-value confidence, and MaskGIT's top probability

SUITES: dict[str, Suite] = {
    "quick": Suite(
        name="quick",
        description="a smoke run of the whole harness on CPU (minutes): tiny models, tiny budget",
        tokenizations=(BYTE, bpe(512)),
        families=(AR, mdlm((16, 64), parallel_decoding(64, full=False)), *discrete_families((16,)),
                  bd3(4, (4,)), bd3(16, (16,)), diffusion_lm((16, 64)),
                  cdcd((16, 64)), latent((16, 64), ae_steps=75), *edit_families((10,), (64,))),
        base={"data": {"source": "shakespeare", "seq_len": 64},
              "model": {"d_model": 96, "n_layers": 2, "n_heads": 2},
              "train": {"steps": 150, "batch_size": 16, "lr": 2.0e-3, "warmup_steps": 20, "ema_decay": 0.0,
                        "precision": "auto"},
              "run": {"log_every": 25, "eval_every": 150, "eval_batches": 2, "save_every": 150,
                      "progress": False}},
        num_samples=8, sample_batch=8, single_samples=2, val_chunks=16, t_samples=2, infill_spans=(4,),
        infill_examples=8, neutral_judges=("smollm2",), mauve_features="smollm2",
    ),
    "small": Suite(
        name="small",
        description="the real comparison on CPU: every family, same backbone, data and token budget "
                    "(byte level: 4.9M tokens each; 4k BPE: 2.5M tokens, about 8.6M characters, each)",
        tokenizations=(BYTE, bpe(4096, steps=600)),
        families=(AR, mdlm((32, 128, 512), parallel_decoding(128)), *discrete_families((32, 128)),
                  bd3(4, (4, 2, 1), only=("byte",), thresholds=SMALL_BD3_THRESHOLDS, scores=SMALL_BD3_SCORES,
                      dilated=True),
                  bd3(16, (16, 8, 4), only=("byte",), thresholds=SMALL_BD3_THRESHOLDS, scores=SMALL_BD3_SCORES,
                      dilated=True),
                  diffusion_lm((32, 128, 512)), cdcd((32, 128, 512)),
                  latent((32, 128, 512), ae_steps=700, only=("byte",)), *edit_families((10, 20), (64, 128))),
        base={"data": {"source": "shakespeare", "seq_len": 128},
              "model": {"d_model": 256, "n_layers": 4, "n_heads": 4},
              "train": {"steps": 1200, "batch_size": 32, "lr": 1.0e-3, "warmup_steps": 100, "ema_decay": 0.995,
                        "precision": "auto"},
              "run": {"log_every": 25, "eval_every": 300, "eval_batches": 8, "save_every": 100,
                      "progress": False}},
        num_samples=32, sample_batch=16, val_chunks=128, t_samples=8, infill_spans=(4, 16, 32),
        infill_examples=64, neutral_judges=("smollm2",), mauve_features="smollm2",
        min_timing_s=3.0,  # a fast setting's 32 samples take under a second: one timing of it is noise
    ),
}

# The GPU-sized variant, documented for anyone with a GPU (not run by CI): the same suite with
# `--set model.d_model=768 model.n_layers=12 model.n_heads=12 data.seq_len=1024 train.steps=100000
#  train.batch_size=512 data.source=hf:openwebtext` is the papers' OpenWebText setting.


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise UserError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")
    return SUITES[name]
