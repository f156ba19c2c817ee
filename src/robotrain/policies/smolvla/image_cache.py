"""Image features of a frozen VLM kept between epochs, keyed by the exact pixels they came from.

When the VLM is frozen (train_expert_only, the default), a camera frame's image tokens (vision tower + connector)
are a fixed function of its pixels, and the tower is most of a training step at real sizes. A dataset shows every
frame once per epoch, so from the second epoch on the tokens can be read back instead of computed.

- The key is a hash of the tower's input (the resized, scaled pixels, their dtype and shape), so a frame changed
  in any way (augmentation, another normalization) is simply a miss: nothing depends on dataset indices.
- A missed image is encoded on its own (a batch of one): its tokens never depend on which other images shared its
  batch. So a run gives the same numbers whether a frame's tokens were computed now or an epoch ago, and a resumed
  run, which starts with an empty cache, continues bit-exactly.
- The tokens go to an unnamed temporary file (in $TMPDIR; the system deletes it when the process ends, even on a
  crash), not to the process's memory, so training uses no more memory with the cache than without; the operating
  system keeps recently read parts in its page cache. Up to a budget: when it is full, later frames are encoded
  every time; when it fills without a single hit (every image is new: augmentation, or a dataset larger than one
  pass of training), it is emptied and switched off. A failed write (disk full) switches it off too, with a warning:
  the numbers are the same either way.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def pixel_key(image: Tensor) -> bytes:
    """A 16-byte digest of one image's bytes, dtype and shape."""
    data = image.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().data, digest_size=16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    return digest.digest()


@dataclass(frozen=True)
class Slot:
    """Where one frame's tokens are in the file."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


class ImageFeatureCache:
    """Image tokens by pixel hash, in a temporary file of at most `budget_bytes` (0: off)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.enabled = budget_bytes > 0
        self.full = False
        self.entries: dict[bytes, Slot] = {}
        self.used_bytes = 0
        self.hits = self.misses = 0
        self._file: IO[bytes] | None = None

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) starts empty: the file belongs to this process and this cache."""
        return {"budget_bytes": self.budget_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["budget_bytes"])

    def encode(self, pixels: Tensor, encoder: Callable[[Tensor], Tensor]) -> Tensor:
        """(N, 3, H, W) pixels -> (N, tokens, D) features: stored ones, and `encoder` on each new image alone."""
        rows = []
        for image in pixels:
            key = pixel_key(image)
            slot = self.entries.get(key)
            if slot is None:
                self.misses += 1
                features = encoder(image[None])[0]
                self._admit(key, features)
            else:
                self.hits += 1
                features = self._read(slot).to(pixels.device)
            rows.append(features)
        return torch.stack(rows)

    def clear(self) -> None:
        """Forget every entry (the encoder's weights changed); the file goes with them."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.entries.clear()
        self.used_bytes = 0
        self.full = False

    def _read(self, slot: Slot) -> Tensor:
        assert self._file is not None
        self._file.seek(slot.offset)
        data = bytearray(self._file.read(slot.nbytes))
        return torch.frombuffer(data, dtype=slot.dtype).view(slot.shape)

    def _admit(self, key: bytes, features: Tensor) -> None:
        if self.full or not self.enabled:  # (switched off by an earlier image of this batch)
            return
        data = features.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
        if self.used_bytes + len(data) > self.budget_bytes:
            self._on_full()
            return
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="robotrain-smolvla-images-")  # noqa: SIM115 (lives with the cache)
            self._file.seek(self.used_bytes)  # (a later seek to read flushes the write buffer)
            self._file.write(data)
        except OSError as error:
            logger.warning("SmolVLA image cache: cannot write its temporary file in %s (%s): switched off; every "
                           "frame is encoded every time. Fix: point TMPDIR at a disk with room, or set "
                           "--policy.image_cache_gb lower", tempfile.gettempdir(), error)
            self.clear()
            self.enabled = False
            return
        self.entries[key] = Slot(self.used_bytes, features.dtype, tuple(features.shape))
        self.used_bytes += len(data)

    def _on_full(self) -> None:
        if self.hits == 0:
            logger.info("SmolVLA image cache: %d frames stored and none seen again (augmented or ever-new images): "
                        "switched off", len(self.entries))
            self.clear()
            self.enabled = False
            return
        self.full = True
        logger.info("SmolVLA image cache full at %.1f GB (%d frames); frames beyond it are encoded every time. "
                    "More room for it: --policy.image_cache_gb", self.used_bytes / 1e9, len(self.entries))
