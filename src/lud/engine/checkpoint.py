"""Atomic checkpoint files with an integrity digest, and reading them back.

Every file a run writes goes through :func:`_atomic_write`: the bytes go to a temporary file in
the destination folder, are fsynced, and the temporary file is renamed over the destination
(``os.replace``, atomic within one file system). A process killed at any point therefore leaves
either the previous complete file or the new complete file, plus at worst a temporary
``.NAME.XXXXXXXX.tmp`` file that :func:`remove_stale_temp_files` clears.

A run checkpoint (:func:`save_checkpoint`) also records a SHA-256 of its contents under
``"sha256"``; :func:`load_checkpoint` recomputes it. ``torch.load`` notices a truncated file but
not a flipped byte in the tensor data (PyTorch does not check the zip records' CRC-32), so without
the digest a damaged file would load as silently wrong weights.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .faults import fault_point

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "WriteError",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "payload_digest",
    "remove_stale_temp_files",
    "save_checkpoint",
    "verify_checkpoint",
]

#: Marks a file written by :mod:`lud.engine` (as opposed to a foreign weight file).
CHECKPOINT_FORMAT = "lud-run-checkpoint/1"
#: Key of the SHA-256 (hex) of the rest of the checkpoint.
DIGEST_KEY = "sha256"
#: Entries every lud run checkpoint has (what evaluation and teacher loading need).
REQUIRED_KEYS = ("epoch", "model", "model_name", "num_classes", "config")

# mkstemp's names: "." + destination name + "." + 8 random characters + ".tmp"
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, corrupt or foreign."""


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


class WriteError(OSError):
    """A file could not be written: ``filename`` names it, ``errno``/``strerror`` say why."""

    def __str__(self) -> str:
        return (
            f"[Errno {self.errno}] cannot write {self.filename}: {self.strerror} "
            f"(the previous {Path(str(self.filename)).name}, if any, is intact)"
        )


def _write_error(exc: OSError, path: Path) -> WriteError:
    """The same error (errno kept) as a :class:`WriteError` naming the file being written."""
    return WriteError(exc.errno, exc.strerror or str(exc), str(path))


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then ``os.replace``.

    A crash mid-write leaves the previous file intact: ``os.replace`` is atomic within one
    file system, which is why the temp file must live in the destination folder. Errors of
    the file system (full disk, read-only folder) are re-raised as :class:`OSError` naming
    ``path``, with the same ``errno``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(exc, path) from None
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; run files are as readable as any other
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            fault_point(f"write:{path.name}")
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(exc, path) from None
        raise
    try:  # make the rename itself durable; not possible on every OS/file system
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically.

    The object is serialised in memory first: ``torch.save`` into a file that hits a full disk
    fails with an opaque ``RuntimeError`` ("unexpected pos"), while a plain write of the bytes
    raises the real ``OSError`` (``ENOSPC``), which is then reported with the path.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write(Path(path), buf.getbuffer())  # a view: no second copy of the bytes


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(Path(path), data)


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write(Path(path), text.encode("utf-8"))


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed writes left in ``folder``; returns them.

    Only names of the form :func:`_atomic_write` creates are touched. Call it only when no other
    process is writing into ``folder``.
    """
    d = Path(folder)
    if not d.is_dir():
        return []
    stale = [p for p in d.iterdir() if _TEMP_RE.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ----------------------------------------------------------------------------- digest
def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` canonically: tensors by dtype, shape and bytes; containers in order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):  # a tuple may come back as a list: same digest
        h.update(f"L{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:
        text = repr(obj)
        h.update(f"{type(obj).__name__}{len(text)}:{text};".encode())


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` hashed canonically (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def payload_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's contents, the ``"sha256"`` entry itself excluded."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Atomically save a run checkpoint with its SHA-256 recorded under ``"sha256"``."""
    atomic_save({**state, DIGEST_KEY: payload_digest(state)}, path)


def verify_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` if a loaded lud checkpoint lacks entries or fails its digest.

    Checkpoints written before the digest existed (no ``"sha256"``) are accepted.
    """
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is an incomplete lud checkpoint: it lacks {', '.join(missing)}"
        )
    stored = ckpt.get(DIGEST_KEY)
    if stored is not None and stored != payload_digest(ckpt):
        raise CheckpointError(
            f"{path} is corrupt: its contents do not match the SHA-256 recorded when it was "
            "written (the file was damaged or modified after it was saved)"
        )


def read_torch_file(path: Path, *, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with clear errors (``what`` names the file in them).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated, corrupt or not a torch file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable {what}: it is truncated, corrupt or not a torch file "
            f"({reason})"
        ) from None


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (a lud run checkpoint).

    Loaded with ``weights_only=True``: a run checkpoint holds only tensors and plain Python
    values, so no pickled code can run.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is unreadable (truncated, not a torch file), not a lud run
            checkpoint, lacks required entries, or does not match its recorded SHA-256.
    """
    p = Path(path)
    ckpt = read_torch_file(p, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is not a lud run checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    verify_checkpoint(ckpt, p)
    return ckpt
