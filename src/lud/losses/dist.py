"""DIST: "Knowledge Distillation from A Stronger Teacher" (Huang et al., NeurIPS 2022).

With ``y = softmax(z / tau)`` (B×C):

* inter-class relation: ``inter = 1 - mean_b pearson(y_S[b, :], y_T[b, :])`` (rows);
* intra-class relation: ``intra = 1 - mean_c pearson(y_S[:, c], y_T[:, c])`` (columns);
* ``L = ce_weight * CE + beta * tau^2 * inter + gamma * tau^2 * intra``.

Defaults follow DIST's released CIFAR code (``hunto/image_classification_sota``,
``DISTLoss(beta=2, gamma=2, tem=4)`` with CE weight 1); ImageNet uses ``tau = 1``, beta = gamma = 1.

Degenerate rows/columns. Pearson is undefined when either vector has zero variance: a batch
of one has no column variance, a constant logit row gives a uniform softmax. The released code
adds ``eps = 1e-8`` to the denominator, which turns such a correlation into 0 (a constant loss
of 1) and, when only the *student* side is flat (e.g. a zero-initialised classifier head),
produces gradients of order ``1/eps``. Here such rows/columns are left out of the mean (and get
no gradient); if none is defined the relation term is 0. On well-posed inputs this is exactly
Pearson's coefficient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput
from .params import non_negative_param, positive_param
from .registry import register_loss

__all__ = ["DISTLoss", "dist_relations", "pearson_rows"]


def pearson_rows(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise Pearson correlation of two ``(n, m)`` tensors.

    Returns:
        ``(corr, defined)``: ``corr`` of shape ``(n,)`` (0 where undefined) and a boolean mask of
        the rows where both sides have non-negligible variance (more than rounding noise of
        the working dtype, relative to the row's magnitude).
    """
    m = a.shape[1]
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    na = ac.square().sum(dim=1)
    nb = bc.square().sum(dim=1)
    if m < 2:
        return torch.zeros_like(na), torch.zeros_like(na, dtype=torch.bool)
    fin = torch.finfo(a.dtype)

    def flat(sq_norm: Tensor, x: Tensor) -> Tensor:
        # Rounding in the mean leaves ~eps*|x| per entry in a constant row.
        noise = 4.0 * fin.eps * x.detach().abs().amax(dim=1)
        return sq_norm.detach() <= m * noise.square() + fin.tiny

    defined = ~(flat(na, a) | flat(nb, b))
    # Select before sqrt/divide so the undefined rows contribute no NaN to the backward pass.
    one = torch.ones_like(na)
    denom = torch.sqrt(torch.where(defined, na, one)) * torch.sqrt(torch.where(defined, nb, one))
    corr = torch.where(defined, (ac * bc).sum(dim=1) / denom, torch.zeros_like(na))
    return corr, defined


def _relation(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``1 - mean pearson`` over the defined rows (0 if none) and that mean correlation."""
    corr, defined = pearson_rows(a, b)
    count = defined.sum()
    mean_corr = corr.sum() / count.clamp(min=1)
    loss = torch.where(count > 0, 1.0 - mean_corr, torch.zeros_like(mean_corr))
    return loss, mean_corr.detach()


def dist_relations(
    student_logits: Tensor, teacher_logits: Tensor, tau: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(inter, intra, mean_row_corr, mean_col_corr)`` of DIST, without the ``tau^2`` factor."""
    t = positive_param("tau", tau)
    y_s = F.softmax(student_logits / t, dim=1)
    y_t = F.softmax(teacher_logits / t, dim=1)
    inter, row_corr = _relation(y_s, y_t)
    intra, col_corr = _relation(y_s.t(), y_t.t())
    return inter, intra, row_corr, col_corr


@register_loss("dist", bench=True, summary="Pearson inter/intra relations (Huang et al., NeurIPS 2022)")
class DISTLoss(DistillationLoss):
    """DIST: ``ce_weight*CE + beta*tau^2*inter + gamma*tau^2*intra``. Terms: ``ce, inter, intra``.

    Args:
        tau: softmax temperature (> 0).
        beta: weight of the inter-class (row) relation.
        gamma: weight of the intra-class (column) relation.
        ce_weight: weight of the cross-entropy on the raw student logits.
        validate: check inputs on every call.

    Stats: ``tau``, ``inter_corr`` and ``intra_corr`` (mean Pearson over defined rows/columns).
    """

    def __init__(
        self,
        tau: float = 4.0,
        beta: float = 2.0,
        gamma: float = 2.0,
        ce_weight: float = 1.0,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        self.tau = positive_param("tau", tau)
        self.beta = non_negative_param("beta", beta)
        self.gamma = non_negative_param("gamma", gamma)
        self.ce_weight = non_negative_param("ce_weight", ce_weight)

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        ce = F.cross_entropy(student_logits, targets)
        inter, intra, row_corr, col_corr = dist_relations(student_logits, teacher_logits, self.tau)
        t2 = self.tau * self.tau
        return self.output(
            {
                "ce": self.ce_weight * ce,
                "inter": (self.beta * t2) * inter,
                "intra": (self.gamma * t2) * intra,
            },
            {"tau": torch.tensor(self.tau), "inter_corr": row_corr, "intra_corr": col_corr},
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, beta={self.beta}, gamma={self.gamma}, ce_weight={self.ce_weight}"
