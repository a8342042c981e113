"""Seeds, determinism switches and RNG-state capture for exact resumption."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "configure_determinism",
    "derive_seed",
    "make_generator",
    "restore_rng_state",
    "seed_everything",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """Switch torch to deterministic kernels, or let cuDNN pick the fastest ones.

    ``warn_only=True``: an op without a deterministic implementation warns instead of
    killing a long run; the warning names the op so the user can decide.
    """
    if deterministic:
        # cuBLAS needs this before its first use to be reproducible (documented by PyTorch).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``(seed, epoch, rank)``.

    Adding small integers (``seed + epoch``) makes runs with neighbouring seeds share
    streams; SeedSequence hashing does not.
    """
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def make_generator(device: torch.device, *parts: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``parts`` (see :func:`derive_seed`)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states of Python, NumPy, torch CPU and (if present) every CUDA device."""
    # Plain types and tensors only, so checkpoints load with torch.load(weights_only=True).
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored only if devices match."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(
        state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"]
    )
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
