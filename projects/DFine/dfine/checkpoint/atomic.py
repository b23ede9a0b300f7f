"""Checkpoints that a killed process cannot leave half-written.

fvcore's ``Checkpointer.save`` streams ``torch.save`` into the final file and then overwrites
``last_checkpoint`` in place: a SIGKILL (or a full disk) during either leaves a truncated file that
``--resume`` then fails to load. Here both are written to a temporary file in the same folder,
flushed to disk, and renamed over the target with ``os.replace``, which is atomic: the target is
always either the previous complete file or the new complete one.
"""
import contextlib
import glob
import os
import tempfile
from typing import Any, Callable, IO

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .files import CheckedLoading

__all__ = ["AtomicCheckpointer", "atomic_write"]


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once ``write`` has returned
    and the data are on disk. If ``write`` raises (or the process dies), ``path`` is untouched; an
    exception also removes the temporary file. A killed process leaves its hidden
    ``.<name>.*.tmp``: the next write of the same ``path`` (a resumed run saves the checkpoint
    it was killed in again) removes it."""
    folder, name = os.path.split(os.path.abspath(path))
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp's 0o600 would differ from files written by open()
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    # The rename itself reaches the disk with the folder's entry.
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


class AtomicCheckpointer(CheckedLoading, DetectionCheckpointer):
    """``DetectionCheckpointer`` whose checkpoint files and ``last_checkpoint`` tag are written
    with :func:`atomic_write`. A ``save_dir`` that is not a local folder (an ``iopath`` URL) is
    written by ``DetectionCheckpointer`` as before. Loading refuses a file that is not a readable
    checkpoint, naming it (:class:`CheckedLoading`)."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self._saves_locally():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._saves_locally():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename.encode()))

    def _saves_locally(self) -> bool:
        return bool(self.save_dir) and self.save_to_disk and os.path.isdir(self.save_dir)
