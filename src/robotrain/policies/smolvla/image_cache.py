"""Image features of a frozen VLM kept between epochs, keyed by the exact pixels they came from.

When the VLM is frozen (train_expert_only, the default), a camera frame's image tokens (vision tower + connector)
are a fixed function of its pixels, and the tower is most of a training step at real sizes. A dataset shows every
frame once per epoch, so from the second epoch on the tokens can come from memory instead.

- The key is a hash of the tower's input (the resized, scaled pixels, their dtype and shape), so a frame changed
  in any way (augmentation, another normalization) is simply a miss: nothing depends on dataset indices.
- A missed image is encoded on its own (a batch of one): its tokens never depend on which other images shared its
  batch. So a run gives the same numbers whether a frame's tokens were computed now or an epoch ago, and a resumed
  run, which starts with an empty cache, continues bit-exactly.
- Entries live in CPU memory up to a budget. When it is full, later frames are encoded every time; when it fills
  without a single hit (every image is new: augmentation, or a dataset larger than one pass of training), it is
  emptied and switched off.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def pixel_key(image: Tensor) -> bytes:
    """A 16-byte digest of one image's bytes, dtype and shape."""
    data = image.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().data, digest_size=16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    return digest.digest()


class ImageFeatureCache:
    """Image tokens by pixel hash, within `budget_bytes` of CPU memory (0: off)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.enabled = budget_bytes > 0
        self.full = False
        self.entries: dict[bytes, Tensor] = {}
        self.used_bytes = 0
        self.hits = self.misses = 0

    def encode(self, pixels: Tensor, encoder: Callable[[Tensor], Tensor]) -> Tensor:
        """(N, 3, H, W) pixels -> (N, tokens, D) features: remembered ones, and `encoder` on each new image alone."""
        rows = []
        for image in pixels:
            key = pixel_key(image)
            features = self.entries.get(key)
            if features is None:
                self.misses += 1
                features = encoder(image[None])[0]
                self._admit(key, features)
            else:
                self.hits += 1
                features = features.to(pixels.device, non_blocking=True)
            rows.append(features)
        return torch.stack(rows)

    def clear(self) -> None:
        """Forget every entry (the encoder's weights changed)."""
        self.entries.clear()
        self.used_bytes = 0
        self.full = False

    def _admit(self, key: bytes, features: Tensor) -> None:
        if self.full:
            return
        size = features.numel() * features.element_size()
        if self.used_bytes + size <= self.budget_bytes:
            self.entries[key] = features.detach().to("cpu", copy=True)
            self.used_bytes += size
            return
        if self.hits == 0:
            logger.info("SmolVLA image cache: %d frames stored and none seen again (augmented or ever-new images): "
                        "switched off", len(self.entries))
            self.clear()
            self.enabled = False
            return
        self.full = True
        logger.info("SmolVLA image cache full at %.1f GB (%d frames); frames beyond it are encoded every time. "
                    "More memory for it: --policy.image_cache_gb", self.used_bytes / 1e9, len(self.entries))
