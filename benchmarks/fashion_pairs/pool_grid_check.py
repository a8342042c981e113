"""Why the fashion_pairs CNNs use ``pool_grid: [1, 2]``: a plain CE run of one model, printing test
top-1 per epoch (one thread, SGD one-cycle, batch 128, 50 test pairs per class).

    python benchmarks/fashion_pairs/pool_grid_check.py cnn_small 1,1 150 2   # global pooling
    python benchmarks/fashion_pairs/pool_grid_check.py cnn_small 1,2 150 2   # each half pooled

Measured 2026-11-29 on the 2-core AMD build VM (shared): 3.9 % / 9.0 % (global) against 17.4 % /
35.3 % (halves) after epochs 1 / 2.
"""

import sys
import time

import torch
import torch.nn.functional as F

from lud.data.fashion_pairs import load_fashion_pairs
from lud.models import build_model


def main() -> None:
    name, grid_text, per, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    grid = tuple(int(g) for g in grid_text.split(","))
    torch.set_num_threads(1)
    s = load_fashion_pairs(None, train_per_class=per, test_per_class=50, pair_seed=0,
                           val_split=0.1, seed=0)
    x_train, y_train = s.train_images.float() / 255, s.train_labels
    x_test, y_test = s.test_images.float() / 255, s.test_labels
    if name.startswith("mlp"):
        kwargs = {"input_shape": tuple(x_train.shape[1:])}
    else:
        kwargs = {"pool_grid": grid}
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, in_channels=1, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    steps = epochs * (len(x_train) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=steps, pct_start=0.15)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        for i in range(0, len(x_train) - 127, 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"{name} pool_grid={grid} per_class={per} epoch {epoch + 1}: test top-1 {acc:.3f} "
              f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
