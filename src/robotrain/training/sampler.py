"""The order training samples are drawn in: shuffled per epoch, episode-aware, resumable to the exact sample."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class EpisodeAwareSampler(torch.utils.data.Sampler[int]):
    """Shuffles the frames of every epoch, leaving out the last `drop_n_last_frames` of each episode.

    Diffusion Policy drops the last frames because their action windows would be mostly padding. The permutation of
    epoch e depends only on (seed, e), and `start` skips into it, so `state_dict()` after N batches resumes at
    exactly the sample an uninterrupted run would draw next.
    """

    def __init__(self, episode_starts: Sequence[int], episode_ends: Sequence[int], drop_n_last_frames: int = 0,
                 shuffle: bool = True, seed: int = 0):
        indices = [np.arange(start, max(start, end - drop_n_last_frames))
                   for start, end in zip(episode_starts, episode_ends, strict=True)]
        self.indices = torch.from_numpy(np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64))
        if len(self.indices) == 0:
            raise ValueError("every episode is shorter than drop_n_last_frames: no frame is left to train on")
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return len(self.indices)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return self.indices
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        return self.indices[torch.randperm(len(self.indices), generator=generator)]

    def __iter__(self) -> Iterator[int]:
        # An endless stream across epochs: the loop decides when to stop, and epoch boundaries never stall workers.
        while True:
            order = self._order(self.epoch)
            for position in range(self.start, len(order)):
                self.start = position + 1
                yield int(order[position])
            self.epoch, self.start = self.epoch + 1, 0

    def state_after(self, samples: int) -> dict[str, int]:
        """Where the stream stands once `samples` samples were drawn from the start of training."""
        epoch, start = divmod(samples, len(self.indices))
        return {"epoch": epoch, "start": start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.start = int(state["epoch"]), int(state["start"])
