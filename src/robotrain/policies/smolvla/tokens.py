"""Task text -> language tokens, as LeRobot 0.4.4's SmolVLA preprocessor makes them, each distinct text encoded once.

LeRobot tokenizes the batch's `task` strings at every step (NewLineTaskProcessorStep, then TokenizerProcessorStep):
a trailing "\\n" is added when missing, the text is encoded with the backbone's tokenizer (its special tokens
included), truncated to tokenizer_max_length, and right-padded with the pad token to the longest text of the batch
(pad_language_to="longest") or to tokenizer_max_length ("max_length"). A dataset has a handful of distinct tasks,
so here each text is encoded the first time it is seen and only the padding is redone per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from robotrain.errors import UserError


class TaskTokenizer:
    """Encodes task strings to (ids, mask) tensors with a per-text cache; `encoded` counts the texts encoded."""

    def __init__(self, tokenizer: Any, max_length: int, padding: str):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            raise UserError("the backbone's tokenizer has no pad token, which padding task texts to one length "
                            "needs (LeRobot's tokenizer step needs it too). Fix: use a tokenizer whose "
                            "tokenizer_config.json names a pad_token")
        self.pad_id = int(pad_id)
        self.cache: dict[str, list[int]] = {}  # python ints: safe to reuse across no_grad/inference-mode calls

    @property
    def encoded(self) -> int:
        return len(self.cache)

    def ids(self, task: str) -> list[int]:
        """The token ids of one task text (with its trailing newline), truncated to max_length."""
        ids = self.cache.get(task)
        if ids is None:
            text = task if task.endswith("\n") else f"{task}\n"
            ids = list(self.tokenizer(text, max_length=self.max_length, truncation=True)["input_ids"])
            self.cache[task] = ids
        return ids

    def __call__(self, tasks: Sequence[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids and (B, L) bool mask (False on padding), right-padded as configured."""
        rows = [self.ids(task) for task in tasks]
        length = self.max_length if self.padding == "max_length" else max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids.to(device), mask.to(device)
