"""AR -> diffusion adaptation (DiffuLLaMA, Gong et al., 2025, Sec. 3.2; Dream, Ye et al., 2025): start a masked
diffusion model from a trained autoregressive baseline instead of from scratch.

* **Logit shift.** The AR model's output at position l (reading [START] x_0 ... x_{l-1}) predicts x_l. The adapted
  denoiser keeps that: it reads [START] x_t (L + 1 tokens, positions 0..L, as the AR model placed them) and
  position l's logits, which read x_t[l - 1] and everything else, predict x0_l. So no weight has to learn a new
  job: only the attention widens. `process.logit_shift=true` on a masked model stores this in its config.
* **Attention-mask annealing.** Training starts from the AR model's causal mask and opens it to full
  bidirectional attention over `anneal_steps` steps: at step s each query may also see each future key with
  probability min(1, s / anneal_steps) (DiffuLLaMA's annealing of the causal mask), drawn anew per step.
  Evaluation and sampling always use the full bidirectional model.

* **Block diffusion.** With process.name=block (`adapt --block-size B`) the BD3-LM model starts from the AR
  weights under its own block-causal training mask: the AR network's attention pattern carries over (each
  noisy token sees the clean tokens before it), its input/output alignment does not. `process.logit_shift=true`
  keeps that too (Dream / Fast-dLLM v2; processes/block_shift.py: output l reads token l - 1 and predicts
  token l, a block's first token from the clean text before it), and then `--anneal-steps` opens the attention
  inside each noisy block from causal to full; at step 0 with annealing, the prediction for the first masked
  token of every block is the AR model's next-token distribution.

Pretrained networks from elsewhere start here too: train/adapt_llama.py (SmolLM2 and other LLaMA-family causal
LMs), train/adapt_bert.py (masked LMs); `source_kind` tells `textdiffusion adapt` which one a --from names.

`AdaptTrainer(cfg, ar_dir, anneal_steps)` is the trainer with the AR weights loaded at the start (a run resumed
from its own checkpoint keeps its weights) and the annealed mask set for each step; `FinetuneTrainer(cfg, folder)`
starts any run from a trained model of the same shape (SFT of a pretrained or adapted model).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import UserError
from ..data.tokenizers import META_FILE, load_tokenizer
from . import checkpoint as ckpt
from .config import Config
from .trainer import Trainer


def annealed_mask(length: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """[length, length] bool: causal, plus each future key with probability `ratio`; None (no mask) at ratio 1."""
    if ratio >= 1:
        return None
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return causal | (torch.rand(length, length, generator=generator) < ratio)


def is_textdiffusion_folder(path: str | Path) -> bool:
    """Whether `path` is one of our run or model folders (not a pretrained causal LM from elsewhere)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        ckpt.read_config(ckpt.resolve_model_dir(path))
    except UserError:
        return False
    return True


def source_kind(spec: str | Path) -> str:
    """What `textdiffusion adapt --from` names: "ours" (a run of ours), "masked_lm" (a BERT-style folder:
    train/adapt_bert.py) or "causal" (smollm2, a .gguf file, a LLaMA-family folder: train/adapt_llama.py)."""
    if is_textdiffusion_folder(spec):
        return "ours"
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        import json

        from ..interop.hf_causal import CAUSAL_TYPES

        try:
            kind = str(json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", ""))
        except (OSError, ValueError, AttributeError) as exc:
            raise UserError(f"{path / 'config.json'} is unreadable or not a model config: restore it") from exc
        if kind.lower() not in CAUSAL_TYPES:
            from ..interop.masked_lm import _masked_lm_types

            if kind in _masked_lm_types():
                return "masked_lm"
            raise UserError(f"{path} holds a {kind!r} model: adapt starts from our AR runs, LLaMA-family causal "
                            "LMs or masked LMs (BERT, RoBERTa, ModernBERT)")
    return "causal"


def copy_tokenizer(source: Path, out_dir: str | Path) -> None:
    """Give a new run the tokenizer of the model it starts from (a bpe is not trained again)."""
    tok_dir = Path(out_dir) / "tokenizer"
    if not (tok_dir / META_FILE).is_file():
        load_tokenizer(source).save(tok_dir)


def refuse_sharded_start(cfg: Config, what: str) -> None:
    """Runs that start from another model's weights load them whole into an unsharded model: not under FSDP."""
    if cfg.train.parallel == "fsdp":
        raise UserError(f"{what} loads another model's full weights, which train.parallel=fsdp cannot take yet: "
                        "use train.parallel=ddp (the default)")


def load_start(trainer: Trainer, source: Path, saved: dict, causal: bool | None = None) -> None:
    """Load the weights of the model in `source` (EMA ones where saved) into a fresh trainer's model and EMA.
    The shapes must agree; `causal` is what the source's backbone had (None: the same as the trainer's)."""
    wanted = trainer.model_cfg.to_dict()
    if causal is not None:
        wanted = {**wanted, "causal": causal}
    if saved.get("model") != wanted:
        raise UserError(f"the model in {source} has another shape than this config's model: use the same "
                        "data.seq_len, tokenizer and model section as its run")
    weights = source / (ckpt.EMA_FILE if (source / ckpt.EMA_FILE).is_file() else ckpt.WEIGHTS_FILE)
    trainer.model.load_state_dict({k: v.float().to(trainer.device) for k, v in ckpt.load_weights(weights).items()})
    if trainer.ema is not None:
        trainer.ema.shadow = {k: v.detach().clone().float() for k, v in trainer.model.state_dict().items()}
    trainer._log({"step": 0, "started_from": str(source)})


class FinetuneTrainer(Trainer):
    """The trainer, started from the weights of a trained model of the same shape and process (e.g. SFT of a
    pretrained or adapted model: `textdiffusion sft`). A resumed run keeps its own weights."""

    def __init__(self, cfg: Config, source: str | Path, resume: bool = False):
        refuse_sharded_start(cfg, "a run started from a trained model (sft, distill)")
        folder = ckpt.resolve_model_dir(source)
        saved = ckpt.read_config(folder)
        if saved.get("process", {}).get("name") != cfg.process.name:
            raise UserError(f"{source} is a {saved.get('process', {}).get('name')!r} model but the config trains "
                            f"{cfg.process.name!r}: fine-tune with the model's own process")
        copy_tokenizer(folder, cfg.run.out_dir)
        model = saved.get("model")
        self.start_network = model if isinstance(model, dict) and "arch" in model else None
        super().__init__(cfg, resume=resume)
        if not resume:
            load_start(self, folder, saved)

    def build_model(self) -> tuple:
        """The start's own network where it is not our Transformer (an adapted SmolLM2 or BERT start)."""
        if self.start_network is None:
            return super().build_model()
        from ..interop.adapted import build_network

        return build_network({**self.start_network, "seq_len": self.cfg.data.seq_len})


class AnnealedMask:
    """Trainer mix-in: the causal mask opened over `self.anneal_steps` steps (module notes), seeded per step so a
    resumed run draws the same masks."""

    anneal_steps: int = 0

    def train_step(self) -> float:
        ratio = 1.0 if self.anneal_steps == 0 else min(1.0, self.step / self.anneal_steps)
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.step)  # resumes exactly
        mask = annealed_mask(self.cfg.data.seq_len + 1, ratio, gen)
        self.process.train_attention = None if mask is None else mask.to(self.device)
        try:
            return super().train_step()
        finally:
            self.process.train_attention = None


def check_anneal_steps(anneal_steps: object) -> int:
    if not isinstance(anneal_steps, int) or isinstance(anneal_steps, bool) or anneal_steps < 0:
        raise UserError(f"anneal_steps must be an integer >= 0, got {anneal_steps!r}")
    return anneal_steps


class AdaptTrainer(AnnealedMask, Trainer):
    def __init__(self, cfg: Config, ar_dir: str | Path, anneal_steps: int = 0, resume: bool = False):
        refuse_sharded_start(cfg, "adapt")
        check_anneal_steps(anneal_steps)
        block = cfg.process.name == "block"  # BD3-LM from the AR weights: its own block mask
        if block and anneal_steps and not cfg.process.extra.get("logit_shift", False):
            raise UserError("block adaptation trains with the block-causal mask from the start: drop --anneal-steps "
                            "(or add process.logit_shift=true, whose causal start it opens)")
        if not block and (cfg.process.name != "masked" or not cfg.process.extra.get("logit_shift", False)):
            raise UserError("AR -> diffusion adaptation trains process.name=masked with process.logit_shift=true "
                            "(or process.name=block)")
        source = ckpt.resolve_model_dir(ar_dir)
        saved = ckpt.read_config(source)
        if saved.get("process", {}).get("name") != "autoregressive":
            raise UserError(f"{ar_dir} is not an autoregressive model (its process is "
                            f"{saved.get('process', {}).get('name')!r}): adapt the AR baseline")
        copy_tokenizer(source, cfg.run.out_dir)
        super().__init__(cfg, resume=resume)
        self.anneal_steps = anneal_steps
        if not resume:
            load_start(self, source, saved, causal=True)
            self._log({"step": 0, "anneal_steps": anneal_steps})
