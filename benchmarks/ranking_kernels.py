"""The CPU sort and search kernels behind ``lud.losses.ranking``, against torch's, side by side.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ranking_kernels.py [--repeats 21]

Medians of alternating calls (after 3 warm-up calls each), ms: the packed-key sort and numpy's
``argsort`` against ``torch.sort`` (permutation of every row) on the shapes the loss meets — a
1000×1000 Gram matrix of probabilities, 256×1000 and 64×100 logits, 32×131072 vocabulary rows —
and numpy's row-wise ``searchsorted`` against ``torch.searchsorted`` for the linear soft rank's
window (10⁶ sorted queries, each row's values minus 0.2).
"""

from __future__ import annotations

import argparse

import torch
from loss_speed import _time_round_robin  # this folder is on sys.path when run as a script

from lud.losses import ranking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(256, 1000, generator=g) * 5 / 4, dim=1)
    shapes = {
        "Gram 1000x1000": probs.t() @ probs,
        "logits 256x1000": torch.randn(256, 1000, generator=g) * 3,
        "logits 64x100": torch.randn(64, 100, generator=g) * 3,
        "vocabulary 32x131072": torch.randn(32, 131072, generator=g) * 3,
    }
    print(f"{torch.get_num_threads()} threads; ms, median of {args.repeats}\n")
    print("| rows | packed-key sort | numpy argsort | torch.sort |")
    print("|---|---|---|---|")
    for name, x in shapes.items():
        res = _time_round_robin({"packed": lambda x=x: ranking._packed_argsort(x),
                     "argsort": lambda x=x: x.numpy().argsort(axis=-1),
                     "torch": lambda x=x: x.sort(dim=-1, stable=True)}, args.repeats)
        print(f"| {name} | {res['packed']:.2f} | {res['argsort']:.2f} | {res['torch']:.2f} |")
    v = ranking._standardize(shapes["Gram 1000x1000"], -1).sort(dim=-1).values
    q = v - 0.2
    res = _time_round_robin({"numpy": lambda: ranking._numpy_searchsorted_rows(v, q),
                 "torch": lambda: torch.searchsorted(v, q, right=True)}, args.repeats)
    print("\n| window search, 1000x1000 | numpy row-wise | torch.searchsorted |")
    print("|---|---|---|")
    print(f"| ms | {res['numpy']:.2f} | {res['torch']:.2f} |")


if __name__ == "__main__":
    main()
