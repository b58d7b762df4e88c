"""Few-step sampling by self-distillation through time (SDTT; Deschenaux & Gulcehre, 2024).

A masked diffusion student learns to do in one ancestral step from t to s = t - 2dt what its teacher does
in two, t -> m = t - dt -> s. Both run MDLM's sampler (samplers/mdlm.py): from t to s a masked token is
revealed with probability a(t, s) = (alpha_s - alpha_t) / (1 - alpha_t), with a value drawn from
p(x0 | x_t). The student's step reveals position i with the same probability as the teacher's two steps
(a1 + (1 - a1) a2 = a(t, s)), so matching the output distribution means matching, per masked position,
the law of the revealed value:

    M_i = [a1 p1_i + (1 - a1) a2 E(p2_i | x_m^i = [MASK])] / (a1 + (1 - a1) a2),
    a1 = a(t, m), a2 = a(m, s), p1 = p_teacher(. | x_t, t), p2 = p_teacher(. | x_m, m).

The student minimises KL(M_i || p_student(. | x_t, t)) over masked positions (SDTT's KL objective). M needs an
expectation over x_m: one teacher trajectory gives the unbiased estimate

    T_i = c1 p1_i + c2 [x_m^i = [MASK]] p2_i,  c1 = a1 / a(t, s),  c2 = a2 / a(t, s),

(E[T_i] = M_i: P(x_m^i = [MASK]) = 1 - a1, and the other positions of x_m do not depend on whether i was
revealed). The loss sum_v T_i(v) (log T_i(v) - log p_student(v)) is linear in T where it touches the
student, so its gradient is, in expectation, exactly that of KL(M_i || p_student); T's own mass is 1 in
expectation only, so the loss value is a KL only for the exact target. Distillation runs in rounds: a teacher
with K steps trains a student for K/2; the student is the next round's teacher (SDTT's iterated rounds).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError
from ..processes.base import LossOutput
from ..processes.masked import MaskedDiffusion
from . import checkpoint as ckpt
from .adapt import FinetuneTrainer
from .config import Config, RunConfig


def reveal_probability(alpha_from: torch.Tensor, alpha_to: torch.Tensor) -> torch.Tensor:
    """MDLM's probability that a masked token is revealed from t to s: (alpha_s - alpha_t) / (1 - alpha_t)."""
    return (alpha_to - alpha_from) / (1 - alpha_from).clamp_min(1e-12)


def grid_alphas(process: MaskedDiffusion, t: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """alpha at t, t - dt and t - 2 dt in float64, with alpha = 1 at time 0 as the sampler's last step has it."""
    times = torch.stack([t, t - dt, t - 2 * dt]).double().clamp_min(0.0)
    alphas = process.schedule.alpha(times)
    alphas = torch.where(times <= 1e-12, torch.ones_like(alphas), alphas)
    return alphas[0], alphas[1], alphas[2]


def two_step_target(p1: torch.Tensor, p2: torch.Tensor, masked_mid: torch.Tensor, a1: torch.Tensor,
                    a2: torch.Tensor) -> torch.Tensor:
    """T = c1 p1 + c2 [x_m masked] p2 (module notes), [B, L, V]; a1, a2 are [B] reveal probabilities."""
    both = (a1 + (1 - a1) * a2).clamp_min(1e-12)
    c1, c2 = (a1 / both)[:, None, None], (a2 / both)[:, None, None]
    return c1 * p1 + c2 * masked_mid[..., None].to(p2.dtype) * p2


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One categorical draw per row of `probs` [..., V] from uniforms u [...] (float64 cumulative sums)."""
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u.double() * cdf[..., -1])[..., None].contiguous())[..., 0]
    return idx.clamp_max(probs.shape[-1] - 1)


def distill_kl(target: torch.Tensor, student_logp: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """sum over `positions` of sum_v T(v) (log T(v) - log p_student(v)), with 0 log 0 = 0; a scalar."""
    target = target.to(student_logp.dtype)
    log_t = torch.where(target > 0, target.clamp_min(1e-30).log(), torch.zeros_like(target))
    safe_student = torch.where(target > 0, student_logp, torch.zeros_like(student_logp))  # -inf only where T = 0
    per_position = (target * (log_t - safe_student)).sum(-1)
    return torch.where(positions, per_position, torch.zeros_like(per_position)).sum()


class SDTTObjective:
    """The process, with its training loss replaced by SDTT's; everything else (its NELBO for the
    validation rows, its config when saving) is the process's own."""

    def __init__(self, process: MaskedDiffusion, teacher: nn.Module, student_steps: int):
        if not isinstance(process, MaskedDiffusion):
            raise UserError(f"SDTT distils masked diffusion models; this one is {process.name!r}")
        if student_steps < 1:
            raise UserError(f"the student needs at least 1 sampling step, got {student_steps}")
        self.process, self.teacher, self.student_steps = process, teacher, student_steps

    def __getattr__(self, name: str):
        return getattr(self.process, name)

    def train_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """t on the student's sampling grid (t = j / K, j = 1..K), and uniforms for the corruption and the
        teacher's first step (reveal, value)."""
        b = x0.shape[0]
        j = torch.randint(1, self.student_steps + 1, (b,), generator=generator)
        return {"t": j.double() / self.student_steps, "u": torch.rand(x0.shape, generator=generator),
                "u_reveal": torch.rand(x0.shape, dtype=torch.float64, generator=generator),
                "u_value": torch.rand(x0.shape, dtype=torch.float64, generator=generator)}

    @torch.no_grad()
    def teacher_target(self, xt: torch.Tensor, t: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        """One two-step teacher trajectory from x_t and its target T (module notes), [B, L, V] float64."""
        dt = 1.0 / (2 * self.student_steps)
        alpha_t, alpha_m, alpha_s = grid_alphas(self.process, t, torch.full_like(t, dt))
        a1, a2 = reveal_probability(alpha_t, alpha_m), reveal_probability(alpha_m, alpha_s)
        mask_id = self.process.mask_id
        p1 = self.process.log_probs(self.teacher, xt, t.float()).double().exp()
        masked = xt == mask_id
        reveal = masked & (noise["u_reveal"] < a1[:, None])
        xm = torch.where(reveal, inverse_cdf(p1, noise["u_value"]), xt)
        p2 = self.process.log_probs(self.teacher, xm, (t - dt).float()).double().exp()
        return two_step_target(p1, p2, xm == mask_id, a1, a2)

    def loss(self, model: nn.Module, x0: torch.Tensor, noise: dict[str, torch.Tensor],
             loss_mask: torch.Tensor | None = None) -> LossOutput:
        t = noise["t"].to(x0.device)
        xt, masked = self.process.corrupt(x0, t.float(), noise["u"], loss_mask)
        target = self.teacher_target(xt, t, noise)
        student_logp = self.process.log_probs(model, xt, t.float())
        n_tokens = x0.numel() if loss_mask is None else int(loss_mask.sum())
        return LossOutput(total=distill_kl(target, student_logp, masked), n_tokens=n_tokens)


def load_teacher(folder: Path, like: nn.Module, device: torch.device) -> nn.Module:
    """A frozen copy of `like` holding the weights in `folder` (its EMA weights where saved)."""
    weights = folder / (ckpt.EMA_FILE if (folder / ckpt.EMA_FILE).is_file() else ckpt.WEIGHTS_FILE)
    teacher = copy.deepcopy(like)
    teacher.load_state_dict({k: v.float().to(device) for k, v in ckpt.load_weights(weights).items()})
    return teacher.eval().requires_grad_(False)


class DistillTrainer(FinetuneTrainer):
    """One SDTT round: the student starts from the teacher's weights and trains for `student_steps`
    sampling steps against the teacher's 2 * student_steps."""

    def __init__(self, cfg: Config, teacher: str | Path, student_steps: int, resume: bool = False):
        folder = ckpt.resolve_model_dir(teacher)
        self.student_steps = student_steps
        super().__init__(cfg, folder, resume=resume)
        self.process = SDTTObjective(self.process, load_teacher(folder, self.model, self.device), student_steps)
        if not resume:
            self._log({"step": 0, "distill_teacher": str(folder), "student_steps": student_steps,
                       "teacher_steps": 2 * student_steps})


    def objective_line(self) -> str:
        return (f"objective: SDTT, the KL from the teacher's {2 * self.student_steps}-step output law to the student's "
                f"{self.student_steps}-step one (the recipe's loss is not used; val_nelbo is the bound)")


def round_steps(teacher_steps: int, rounds: int) -> list[int]:
    """The student's sampling steps in each round: teacher_steps / 2, / 4, ... (each must be a whole number)."""
    if rounds < 1:
        raise UserError(f"distillation needs at least 1 round, got {rounds}")
    if teacher_steps % (2**rounds):
        raise UserError(f"--teacher-steps {teacher_steps} does not halve {rounds} times into whole step counts: "
                        f"use a multiple of {2**rounds}")
    return [teacher_steps // 2**r for r in range(1, rounds + 1)]


def teacher_config(source: str | Path, out: str | Path, overrides: list[str] | None = None) -> Config:
    """The source model's training config (data, tokenizer, model, process), writing to `out`, with overrides."""
    from .config import _apply_overrides, upgrade_saved_config

    folder = ckpt.resolve_model_dir(source)
    raw = ckpt.read_config(folder).get("train_config")
    if not isinstance(raw, dict):
        raise UserError(f"{folder} holds no training config: distil a model trained by `textdiffusion train`")
    cfg = Config.from_dict(upgrade_saved_config(raw))
    cfg.run.out_dir = str(out)
    # how the source's own run showed progress (the shipped model's: not at all) is no choice of the user who
    # starts this distillation: show it unless an override says otherwise
    cfg.run.progress = RunConfig.progress
    return _apply_overrides(cfg, overrides)


def distill(source: str | Path, out: str | Path, teacher_steps: int = 64, rounds: int = 3,
            overrides: list[str] | None = None, log=print) -> list[Path]:
    """SDTT rounds from `source`: round r (folder out/round-r) distils the previous round's student (round 1:
    the source) into a student for teacher_steps / 2^r steps, for train.steps steps each. Finished rounds
    are kept, a partial one resumes. Returns the rounds' checkpoint folders (the last is the final student)."""
    folders, teacher = [], ckpt.resolve_model_dir(source)
    process = ckpt.read_config(teacher).get("process", {}).get("name")
    if process != "masked":
        raise UserError(f"{source} is a {process!r} model: SDTT distils masked diffusion (MDLM) models")
    plan = round_steps(teacher_steps, rounds)
    for r, steps in enumerate(plan, start=1):
        cfg = teacher_config(source, Path(out) / f"round-{r}", overrides)
        done_cfg = Path(cfg.run.out_dir) / "checkpoint" / ckpt.CONFIG_FILE
        done = ckpt.read_config(done_cfg.parent).get("trained", {}).get("steps", 0) if done_cfg.is_file() else None
        if done is not None and done >= cfg.train.steps:
            log(f"round {r}: done already ({done_cfg.parent})")
        else:
            log(f"round {r}: {2 * steps} teacher steps -> {steps} student steps, {cfg.train.steps} training steps")
            DistillTrainer(cfg, teacher, steps, resume=done is not None).run()
        teacher = Path(cfg.run.out_dir) / "checkpoint"
        folders.append(teacher)
    return folders
