"""Signals as clusters send them: to the whole process group (Slurm, systemd, `kill -TERM -PGID`, Ctrl-C).

- StopRequest, in the trainer: SIGINT or SIGTERM sets a flag; the loop finishes its step, saves a checkpoint and
  returns. A second signal acts at once (checkpoints stay atomic), except under torchrun, whose agent forwards the
  group's signal a second time and escalates to SIGKILL on its own.
- shield_helper, in a helper process (a data-loader worker, a simulator worker): the group's SIGINT and SIGTERM
  are ignored, so the trainer can finish its step, save and stop its helpers itself. A SIGTERM sent by the trainer
  (how PyTorch and multiprocessing stop helpers that do not end by themselves) still ends the helper: a thread
  reads each SIGTERM with its sender's pid (sigwaitinfo) and tells the two apart.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """SIGINT/SIGTERM set `signal_name`; the loop that checks it finishes its step, saves and returns."""

    def __init__(self, repeat_acts_at_once: bool = True) -> None:
        # Under torchrun the agent forwards a group's SIGTERM once more: then a repeat must not cut the save short
        # (the agent sends SIGKILL itself if the save takes too long).
        self.repeat_acts_at_once = repeat_acts_at_once
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, saving a checkpoint, then stopping", self.signal_name)
        if self.repeat_acts_at_once:
            signal.signal(signum, self._previous[signum])  # a second signal acts at once (checkpoints stay atomic)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def shield_helper(owner_pid: int) -> None:
    """Make this helper process of `owner_pid` ignore the group's stop signals but obey its owner's SIGTERM."""
    if os.getpid() == owner_pid:
        return  # not a helper: the owner itself must receive its signals
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # every thread: only the watcher below takes it
    threading.Thread(target=_obey_owner_sigterm, args=(owner_pid,), name="robotrain-sigterm", daemon=True).start()


def _obey_owner_sigterm(owner_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == owner_pid or info.si_pid == os.getpid():
            os._exit(128 + signal.SIGTERM)  # the owner stops us (or we stop ourselves): end as SIGTERM would
        # From anyone else it was meant for the group: the owner saves and then stops its helpers itself.
