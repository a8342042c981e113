"""Gradient-norm probe: how hard each loss term pushes on the student logits.

For a multi-term loss (CE + KD + LUD's category/sample rank terms, DKD's TCKD/NCKD, ...) the term
values say little about which term drives learning; the gradient each term puts on the student
logits does. :func:`term_grad_norms` computes, for every named term of a
:class:`~lud.losses.LossOutput`, the Frobenius norm of ``∂ term / ∂ student_logits`` over the whole
``B×C`` batch with ``torch.autograd.grad`` — which only *returns* gradients: no ``.grad`` of any
parameter (the model's, CTKD's temperature module's) is written, and ``retain_graph=True`` keeps the
graph for the training step's own ``output.total.backward()``. The parameter update is therefore
the same with or without the probe (tests/engine/test_gradnorms.py checks it for every registered loss).

Use (every N steps, before the real backward)::

    out = loss_fn(student_logits, teacher_logits, targets, epoch=epoch)
    if step % probe_every == 0:
        norms = term_grad_norms(out, student_logits)  # {"ce": 0.41, "kd": 0.12, ...}
    out.total.backward()

``student_logits`` must be the tensor the loss was called with (the model output, not a detached
or re-cast copy). A term that does not depend on the logits (a constant, a term switched off with
weight 0, a term of detached inputs) gets 0.0.

Cost: one autograd pass per term, through the loss only (never through the model). Measured with
``scripts/bench_gradnorms.py`` (median per call, B=128, C=100, fp32, torch 2.14.1, the project's
2-core CPU shared with other jobs at load average ≈ 6–8, 2026-11-29), one thread
(``torch.set_num_threads(1)``, the steadiest figure on a loaded machine):

* ``kd`` (2 terms): 0.084 ms per probe call; the loss's own backward 0.066 ms (100 reps).
* ``lud`` (4 terms): 17.5 ms per probe call; the loss's own backward 14.9 ms (20 reps).

With two threads on the same loaded machine the figures were erratic (kd 0.26 ms in one run of 200
reps, 36 ms in one of 5; lud 66 ms vs a 35 ms backward), i.e. dominated by thread scheduling. In
every case the probe costs about one extra backward through the loss: for LUD, probing every 50
steps adds ≈ 0.35 ms per step on average.

In training (``runtime.grad_norms_every: N``, :func:`lud.engine.step.compute_loss`; measured with
``scripts/bench_train_costs.py probe-steps``, docs/benchmarks.md "Training costs"): LUD, 100
classes, ``mlp_tiny`` student, batch 128, probe off and on alternating step by step, one thread —
median 43.2 ms per step off, 61.1 ms with N = 1 (×1.41: for a tiny student the loss is a large part
of a step), so ≈ ×1.04 at N = 10.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..losses.base import LossOutput

__all__ = ["term_grad_norms"]


def term_grad_norms(
    output: LossOutput, student_logits: Tensor | Sequence[Tensor]
) -> dict[str, float]:
    """``{term name: ‖∂ term / ∂ student_logits‖₂}`` for every term in ``output.terms``.

    Args:
        output: what the loss returned for this batch; its graph must still be alive (call
            before ``output.total.backward()``).
        student_logits: the logits tensor passed to the loss (requires grad), or several — a
            two-view loss's weak and strong student logits — whose gradients then count as one
            vector: the norm is ``sqrt(Σ_views ‖∂ term / ∂ view‖²)``.

    Returns:
        One float per term, in ``output.terms`` order; 0.0 for terms that do not depend on the
        logits.

    Raises:
        ValueError: a logits tensor does not require grad (a detached copy was passed).
    """
    inputs = [student_logits] if isinstance(student_logits, Tensor) else list(student_logits)
    if not inputs or not all(isinstance(z, Tensor) and z.requires_grad for z in inputs):
        raise ValueError(
            "term_grad_norms: student_logits does not require grad; pass the tensor the loss was "
            "called with (the model output), not a detached copy"
        )
    norms: dict[str, float] = {}
    for name, term in output.terms.items():
        if not isinstance(term, Tensor) or not term.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(term, inputs, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms
