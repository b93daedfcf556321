"""Drop-in loss modules of the losses family (pygen.ops.losses; the math is pygen/ref/losses.py's).

``LinearCrossEntropyLoss`` takes nn.CrossEntropyLoss's arguments (ignore_index, reduction,
label_smoothing; no class weights) and is called on the hidden states and the head weight instead
of on logits, so the [N, V] logits are never materialised:

    loss_fn = pygen.nn.LinearCrossEntropyLoss(ignore_index=-100)
    loss = loss_fn(hidden, model.lm_head.weight, labels)     # == nn.CrossEntropyLoss()(lm_head(hidden), labels)
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import losses as L


class LinearCrossEntropyLoss(nn.Module):
    """``forward(hidden [*, H], weight [V, H], targets [*], bias=None)`` = the cross-entropy of
    ``F.linear(hidden, weight, bias)``; further keyword ``options`` (``z_loss``, ``softcap``,
    ``filter_eps``, ``return_lse``, ``backend``) are pygen.ops.linear_cross_entropy's. No
    parameters or buffers (state_dict is empty, as nn.CrossEntropyLoss's)."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, **options):
        super().__init__()
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.options = options  # keyword arguments of the op, checked by it at the call

    def forward(
        self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return L.linear_cross_entropy(
            hidden, weight, targets, bias, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, **self.options,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"


class InfoNCELoss(nn.Module):
    """Contrastive InfoNCE (pygen.ops.info_nce: SimCLR, MoCo, CLIP) as a module; the constructor
    takes the settings, the call the batch:

        loss_fn = pygen.nn.InfoNCELoss(temperature=0.5)                   # SimCLR: loss_fn(views)
        loss_fn = pygen.nn.InfoNCELoss(symmetric=True)                    # CLIP:
        loss = loss_fn(img, txt, temperature=1 / model.logit_scale.exp())  # learned temperature

    ``forward(queries, keys=None, *, positives=None, queue=None, temperature=None)``; a
    ``temperature`` given to the call replaces the constructor's. Further keyword ``options``
    (``normalize``, ``batch_negatives``, ``reduction``, ``group``, ``backend``) go to the op,
    checked at the call. No parameters or buffers."""

    def __init__(self, temperature: float = 0.1, symmetric: bool = False, **options):
        super().__init__()
        self.temperature, self.symmetric = temperature, symmetric
        self.options = options

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor | None = None,
        *,
        positives: torch.Tensor | None = None,
        queue: torch.Tensor | None = None,
        temperature: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        temp = self.temperature if temperature is None else temperature
        return L.info_nce(queries, keys, temperature=temp, positives=positives, queue=queue, symmetric=self.symmetric,
                          **self.options)  # fmt: skip

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"


class GRPOLoss(nn.Module):
    """TRL GRPOTrainer's loss as a module (pygen.ops.grpo_loss; the constructor takes the
    trainer's loss settings, the call the batch):

        loss_fn = pygen.nn.GRPOLoss(beta=0.0, loss_type="dr_grpo", max_completion_length=1024)
        loss = loss_fn(log_probs, old_log_probs, ref_log_probs, advantages, completion_mask)
        loss = loss_fn.linear(hidden, lm_head.weight, completion_ids, old, ref, advantages, mask)

    ``linear`` is pygen.ops.linear_grpo_loss (log-probs from the hidden states, no [B, T, V]
    logits; ``temperature`` and ``filter_eps`` among ``options``). ``num_items_in_batch`` (dapo)
    is per call. Further keyword ``options`` (``backend``, ...) go to the op, checked at the call.
    No parameters or buffers."""

    def __init__(self, epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.04,
                 loss_type: str = "grpo", max_completion_length: int | None = None, **options):  # fmt: skip
        super().__init__()
        self.epsilon_low, self.epsilon_high, self.beta = epsilon_low, epsilon_high, beta
        self.loss_type, self.max_completion_length = loss_type, max_completion_length
        self.options = options

    def _settings(self, num_items_in_batch: int | torch.Tensor | None) -> dict:
        return dict(
            epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high, beta=self.beta, loss_type=self.loss_type,
            max_completion_length=self.max_completion_length, num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    def forward(self, log_probs: torch.Tensor, old_log_probs: torch.Tensor | None, ref_log_probs: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor,
                num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        options = {k: v for k, v in self.options.items() if k not in ("temperature", "filter_eps")}
        return L.grpo_loss(log_probs, old_log_probs, ref_log_probs, advantages, mask,
                           **self._settings(num_items_in_batch), **options)  # fmt: skip

    def linear(self, hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
               old_log_probs: torch.Tensor | None, ref_log_probs: torch.Tensor | None, advantages: torch.Tensor,
               mask: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        return L.linear_grpo_loss(hidden, weight, tokens, old_log_probs, ref_log_probs, advantages, mask,
                                  **self._settings(num_items_in_batch), **self.options)  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"epsilon_low={self.epsilon_low}, epsilon_high={self.epsilon_high}, beta={self.beta}, "
            f"loss_type={self.loss_type!r}, max_completion_length={self.max_completion_length}"
        )
