"""Controls for gradient guidance: differentiable log p(control | x_s) from the denoiser's token beliefs.

Each control maps `token_logp` [B, L, V] (log p(w_l | x_s), see `gradient.token_log_probs`) to a score [B] that
the guided sampler raises, and says whether finished ids satisfy it (`satisfied`, for success rates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..core.errors import UserError


class Control:
    """The interface: `log_prob(token_logp) -> [B]` (differentiable) and `satisfied(ids) -> bool [B]`.
    A control with `latent = True` reads the latents themselves instead (`classifier.Attribute`)."""

    latent = False

    def log_prob(self, token_logp: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def satisfied(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TokensAt(Control):
    """Given tokens at given positions: sum_l log p(w_l = token_l | x_s)."""

    def __init__(self, tokens: Mapping[int, int]):
        if not tokens:
            raise UserError("TokensAt needs at least one {position: token}")
        self.positions = torch.tensor(sorted(tokens), dtype=torch.long)
        self.tokens = torch.tensor([tokens[p] for p in sorted(tokens)], dtype=torch.long)

    def _check(self, length: int) -> None:
        if int(self.positions.max()) >= length or int(self.positions.min()) < 0:
            raise UserError(f"a TokensAt position is outside the {length} generated positions")

    def log_prob(self, token_logp):
        self._check(token_logp.shape[1])
        pos, tok = self.positions.to(token_logp.device), self.tokens.to(token_logp.device)
        return token_logp[:, pos, tok].sum(-1)

    def satisfied(self, ids):
        self._check(ids.shape[1])
        return (ids[:, self.positions.to(ids.device)] == self.tokens.to(ids.device)).all(-1)


class Contains(Control):
    """The token sequence occurs somewhere: log sum_start exp(sum_k log p(w_{start+k} = token_k | x_s)), a soft
    "or" over the start positions (exact if the positions were independent and only one start could match)."""

    def __init__(self, tokens: Sequence[int]):
        if len(tokens) == 0:
            raise UserError("Contains needs a non-empty token sequence (encode the words with the model's tokenizer)")
        self.tokens = torch.tensor(list(tokens), dtype=torch.long)

    def log_prob(self, token_logp):
        k, length = len(self.tokens), token_logp.shape[1]
        if k > length:
            raise UserError(f"Contains: {k} tokens cannot fit in {length} positions")
        tok = self.tokens.to(token_logp.device)
        windows = torch.stack([token_logp[:, i : i + length - k + 1, tok[i]] for i in range(k)], 0).sum(0)
        return torch.logsumexp(windows, dim=-1)  # windows: [B, starts]

    def satisfied(self, ids):
        k = len(self.tokens)
        if k > ids.shape[1]:
            return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        windows = ids.unfold(1, k, 1)  # [B, starts, k]
        return (windows == self.tokens.to(ids.device)).all(-1).any(-1)


class Length(Control):
    """The text ends after `length` tokens: [EOS] at position `length` and no [EOS] before it."""

    def __init__(self, length: int, eos_id: int):
        if length < 0:
            raise UserError(f"Length needs a length >= 0, got {length}")
        self.length, self.eos_id = length, eos_id

    def log_prob(self, token_logp):
        if self.length >= token_logp.shape[1]:
            raise UserError(f"Length({self.length}) leaves no room for [EOS] in {token_logp.shape[1]} positions")
        eos = token_logp[..., self.eos_id]
        before = torch.log1p(-eos[:, : self.length].exp().clamp_max(1 - 1e-6)).sum(-1)
        return eos[:, self.length] + before

    def satisfied(self, ids):
        if self.length >= ids.shape[1]:  # no room for [EOS]: never met
            return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        is_eos = ids == self.eos_id
        return is_eos[:, self.length] & ~is_eos[:, : self.length].any(-1)
