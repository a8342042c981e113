"""Framework-free pieces of the integrations: logits and labels → the rows a loss sees.

A loss of :mod:`lud.losses` takes ``(N, C)`` logits and ``(N,)`` targets. Hugging Face models
give ``(B, C)`` logits for classification and ``(B, T, V)`` for language modelling, with labels
holding ``ignore_index`` (−100) at padding and prompt positions. :func:`valid_rows` turns either
into the ``(N, C)`` rows of the valid positions; :func:`check_gram_budget` refuses a loss whose
Gram-matrix terms would allocate more than a set number of elements.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["valid_rows", "gram_sizes", "check_gram_budget", "DEFAULT_MAX_GRAM_ELEMENTS"]

IGNORE_INDEX = -100

# 2**22 elements = a 2048 x 2048 float32 matrix (16 MiB). The soft ranks of a Gram matrix's rows
# cost several times the matrix itself, and the C x C term at a 32k vocabulary would be 4 GiB for
# the matrix alone: refuse early, with the number, rather than fail (or swap) inside the loss.
DEFAULT_MAX_GRAM_ELEMENTS = 2**22


def valid_rows(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    shift: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(student, teacher, targets)`` restricted to the positions whose label is not ignored.

    Args:
        student_logits: ``(B, C)`` or ``(B, T, C)``.
        teacher_logits: same shape as ``student_logits``.
        labels: ``(B,)`` for ``(B, C)`` logits, ``(B, T)`` for ``(B, T, C)``.
        shift: causal language modelling: position ``t`` predicts label ``t + 1`` (drop the last
            logit and the first label, as Hugging Face's causal-LM loss does).
        ignore_index: label value of positions that do not count.

    Returns:
        ``(N, C)`` student rows (still attached to the graph), ``(N, C)`` teacher rows, ``(N,)``
        targets; ``N`` may be 0.

    Raises:
        ValueError: when the class (vocabulary) counts, sequence lengths or label shapes differ.
    """
    s, t, y = student_logits, teacher_logits, labels
    if s.dim() not in (2, 3):
        raise ValueError(f"student logits must be (batch, classes) or (batch, seq, vocab), got shape "
                         f"{tuple(s.shape)}")
    what = "vocabulary size" if s.dim() == 3 else "class count"
    if t.shape[-1] != s.shape[-1]:
        raise ValueError(f"{what} mismatch: the student's logits have {s.shape[-1]}, the teacher's "
                         f"{t.shape[-1]}; teacher and student must share one label space (if they "
                         "differ only by padding columns, declare the shared size: vocab_size=...)")
    if t.shape != s.shape:
        axis = "sequence-length" if s.dim() == 3 and t.dim() == 3 else "shape"
        raise ValueError(f"{axis} mismatch: student logits {tuple(s.shape)}, teacher logits "
                         f"{tuple(t.shape)}; both models must see the same inputs")
    if y.shape != s.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(y.shape)} do not fit logits of shape {tuple(s.shape)} "
                         f"(expected {tuple(s.shape[:-1])})")
    if shift:
        if s.dim() != 3:
            raise ValueError("shift=True (causal LM) needs (batch, seq, vocab) logits, got "
                             f"{tuple(s.shape)}")
        s, t, y = s[:, :-1], t[:, :-1], y[:, 1:]
    s, t, y = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), y.reshape(-1)
    keep = y != ignore_index
    return s[keep], t[keep], y[keep]


def gram_sizes(loss: nn.Module, rows: int, classes: int) -> dict[str, int]:
    """Elements of each square matrix ``loss`` would allocate on ``rows`` x ``classes`` logits.

    Known losses with Gram terms: ``lud`` (``cdl``: C x C, ``sdl``: N x N), ``mlkd`` (``class``:
    C x C, ``batch``: N x N), ``lud-released`` (``cc``: C x C, ``bc``: N x N). A term switched off
    by a zero weight allocates nothing. LUD's restrictions are taken into account:
    ``category_top_k`` bounds the class side by ``min(C, N·k, max_categories)`` (+1 for the folded
    tail column, ``category_tail="fold"``), ``sample_max_rows`` bounds the token side. A generic
    ``top_k`` / ``class_subset`` int attribute on any loss caps the class side too. Other losses:
    ``{}``.
    """
    name = getattr(loss, "registry_name", None)
    k = _class_side(loss, rows, classes)
    n = rows
    max_rows = getattr(loss, "sample_max_rows", None)
    if name == "lud" and isinstance(max_rows, int):
        n = min(n, max_rows)

    def on(attr: str) -> bool:
        return float(getattr(loss, attr, 0.0)) > 0

    sizes: dict[str, int] = {}
    if name == "lud":
        if on("cdl_weight"):
            sizes["cdl (classes x classes)"] = k * k
        if on("sdl_weight"):
            sizes["sdl (tokens x tokens)"] = n * n
    elif name == "mlkd":
        if on("class_weight"):
            sizes["class (classes x classes)"] = k * k
        if on("batch_weight"):
            sizes["batch (tokens x tokens)"] = rows * rows
    elif name == "lud-released" and on("kd_weight"):
        sizes["cc (classes x classes)"] = k * k
        sizes["bc (tokens x tokens)"] = rows * rows
    return sizes


def _class_side(loss: nn.Module, rows: int, classes: int) -> int:
    """Side of the class x class Gram matrix: C, or the size of the loss's class restriction."""
    k = classes
    for attr in ("top_k", "class_subset"):
        cap = getattr(loss, attr, None)
        if isinstance(cap, int) and cap > 0:
            k = min(k, cap)
    top_k = getattr(loss, "category_top_k", None)
    if getattr(loss, "registry_name", None) == "lud" and isinstance(top_k, int):
        # the union of every row's top-k holds at most rows·k classes, and is capped
        k = min(k, rows * top_k, int(loss.max_categories))
        k += int(getattr(loss, "category_tail", "fold") == "fold")
    return k


def check_gram_budget(loss: nn.Module, rows: int, classes: int, max_elements: int) -> None:
    """``ValueError`` if a Gram term of ``loss`` on ``rows`` x ``classes`` exceeds ``max_elements``."""
    over = {k: v for k, v in gram_sizes(loss, rows, classes).items() if v > max_elements}
    if over:
        detail = ", ".join(f"{k}: {v:,} elements" for k, v in over.items())
        raise ValueError(
            f"loss '{getattr(loss, 'registry_name', type(loss).__name__)}' would allocate {detail} "
            f"on {rows} tokens x {classes} classes, above max_gram_elements={max_elements:,}. "
            "For LUD at a large vocabulary restrict it (category_top_k=32, sample_max_rows=512); "
            "or set that term's weight to 0, use fewer tokens per batch, or raise "
            "max_gram_elements if the memory is there."
        )
