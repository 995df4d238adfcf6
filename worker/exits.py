"""The exit statuses of the worker's processes, in one table: what `wanq worker` (and each of its ranks) ends with
when it stops on its own. Celery's parent replaces a child that exits; the statuses say why in `ps` and the logs."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    LOAD_FAILED = 3
    """The model could not be loaded (the log says why): the child stops the whole worker instead of taking jobs."""
    RANK_DIED = 70
    """A follower rank died: rank 0 exits at once (it may be blocked in a collective); the job is redelivered."""
    BROKEN = 71
    """A several-GPU job failed mid-denoise and the ranks can no longer agree: the process is replaced."""
