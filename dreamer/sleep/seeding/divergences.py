"""Token-level divergences between a student and a teacher, for GKD.

Generalized knowledge distillation (Agarwal et al., 2024, "On-Policy
Distillation of Language Models") trains the student to match the teacher's
next-token distribution at every position of a sequence. Per position, with
p_T = softmax(teacher_logits / τ) and p_S = softmax(student_logits / τ):

    forward_kl  KL(p_T ‖ p_S) = Σ_v p_T(v) · (log p_T(v) − log p_S(v))   (mode covering)
    reverse_kl  KL(p_S ‖ p_T) = Σ_v p_S(v) · (log p_S(v) − log p_T(v))   (mode seeking)
    jsd         generalized Jensen-Shannon divergence JSD(β), TRL convention:
                    M      = β · p_T + (1 − β) · p_S
                    JSD(β) = β · KL(p_T ‖ M) + (1 − β) · KL(p_S ‖ M)
                with the endpoints special-cased exactly like TRL's
                GKDTrainer.generalized_jsd_loss:
                    β = 0  ->  KL(p_T ‖ p_S)  (forward KL)
                    β = 1  ->  KL(p_S ‖ p_T)  (reverse KL)

The special cases are what make β an interpolation knob. Taken literally the
formula collapses to 0 at both ends (M becomes one of the two distributions and
its weight goes to 0); what survives is its leading term, JSD(β) ≈ β·KL(p_T‖p_S)
as β → 0 and JSD(β) ≈ (1 − β)·KL(p_S‖p_T) as β → 1. So the β = 0/1 values are the
limits of JSD(β)/β and JSD(β)/(1 − β), not of JSD(β) itself. β = 0.5 is the usual
symmetric JSD, bounded by ln 2.

Everything is computed in (at least) float32 from log_softmax, with the
mixture taken in log space via logsumexp, so no probability is ever
exponentiated and then logged again. The teacher is detached: gradients reach
the student logits only. As in TRL, temperature divides the logits and the loss
is not rescaled by τ². Logits are expected to be finite.

`per_token_divergence` returns the unreduced [batch, seq] values;
`token_divergence` averages them over the positions selected by a mask.
"""

import math

import torch
import torch.nn.functional as F

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dim, from log-probabilities: Σ p (log p − log q)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _check_args(student_logits, teacher_logits, kind, beta, temperature):
    if kind not in KINDS:
        raise ValueError(f"unknown divergence kind {kind!r}; expected one of {KINDS}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() != 3:
        raise ValueError(
            f"logits must be [batch, seq, vocab], got shape {tuple(student_logits.shape)}"
        )


def per_token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Divergence at every position, shape [batch, seq] (float32 or wider).

    `kind` is "forward_kl" (KL(teacher‖student)), "reverse_kl"
    (KL(student‖teacher)) or "jsd" (generalized JSD(β), TRL convention, see the
    module docstring); `beta` is only used by "jsd".
    """
    _check_args(student_logits, teacher_logits, kind, beta, temperature)
    # Upcast bf16/fp16 logits: the difference of two log-probs over a large
    # vocab loses most of its digits in half precision. Keep float64 if given.
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    # The teacher is a fixed target: no gradient may flow into it.
    log_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)

    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(log_t, log_s)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(log_s, log_t)

    # log M = log(β p_T + (1 − β) p_S), done as a logsumexp of shifted log-probs
    # so that tiny probabilities keep their precision.
    log_m = torch.logsumexp(
        torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)]), dim=0
    )
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean per-token divergence over the positions where `mask` is true.

    `mask` is [batch, seq], bool or 0/1 (e.g. the completion tokens); None
    means every position counts. Returns a scalar tensor that backpropagates
    into `student_logits` only.
    """
    per_token = per_token_divergence(student_logits, teacher_logits, kind, beta, temperature)
    if mask is None:
        return per_token.mean()
    if tuple(mask.shape) != tuple(per_token.shape):
        raise ValueError(
            f"mask must be [batch, seq] = {tuple(per_token.shape)}, got {tuple(mask.shape)}"
        )
    mask = mask.to(device=per_token.device).bool()
    if not mask.any():
        # An empty mean would be NaN and silently poison the optimizer state.
        raise ValueError("mask selects no positions; nothing to average")
    # Token-level mean (TRL's "batchmean" with labels): long sequences weigh more.
    return per_token[mask].mean()
