"""Training engine: :func:`train` a model (teacher or student) and :func:`evaluate` it.

>>> from lud.config import load_config, resolve_config
>>> from lud.engine import train
>>> summary = train(load_config(resolve_config("cifar100/kd/resnet32x4_resnet8x4")))  # doctest: +SKIP
"""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    save_checkpoint,
)
from .metrics import ECE_BINS, RunningSums, evaluate, expected_calibration_error, predict_logits
from .optim import LRSchedule, build_optimizer, lr_factor
from .runtime import RuntimeContext, resolve_device, setup_runtime
from .seeding import (
    capture_rng_state,
    configure_determinism,
    derive_seed,
    restore_rng_state,
    seed_everything,
)
from .trainer import RunFolderError, TrainingDivergedError, run_dir_of, train

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "ECE_BINS",
    "LRSchedule",
    "RunFolderError",
    "RunningSums",
    "RuntimeContext",
    "TrainingDivergedError",
    "atomic_save",
    "build_optimizer",
    "capture_rng_state",
    "configure_determinism",
    "derive_seed",
    "evaluate",
    "expected_calibration_error",
    "load_checkpoint",
    "lr_factor",
    "predict_logits",
    "resolve_device",
    "restore_rng_state",
    "run_dir_of",
    "save_checkpoint",
    "seed_everything",
    "setup_runtime",
    "train",
]
