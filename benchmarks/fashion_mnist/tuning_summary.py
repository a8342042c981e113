"""One Markdown row per method from `lud tune` folders: validation top-1 of each trial, winner in bold.

    python benchmarks/fashion_mnist/tuning_summary.py runs/fashion_mnist/tune-cnn_large_cnn_small
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def summary(tune_dir: Path) -> str:
    rows = list(csv.DictReader((tune_dir / "tuning.csv").open()))
    trials = max(int(r["trial"]) for r in rows) + 1
    out = [
        "| method | " + " | ".join(f"trial {k}" for k in range(trials)) + " |",
        "|---" * (trials + 1) + "|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for r in (r for r in rows if r["method"] == method):
            mean = r["val_top1_mean"]
            cell = "–" if not mean else f"{float(mean):.2f}"
            if r.get("diverged") not in (None, "", "0"):
                cell += " (diverged)"
            cells.append(f"**{cell}**" if r["chosen"] == "1" else cell)
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}\n\n{summary(Path(arg))}\n")
