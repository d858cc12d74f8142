"""Logging for workflow scripts: everything goes to the rule's ``log:`` file, and errors too."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celltrails.errors import InputError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def script_logging(log_path: str | Path | None, name: str = "celltrails") -> Iterator[logging.Logger]:
    """Send the ``celltrails`` loggers to ``log_path`` (and stderr) for the duration of a script.

    An exception is written to the log before it propagates, so the rule's log says why a job
    failed; a user's input error is logged as one plain line instead of a traceback.
    """
    root = logging.getLogger("celltrails")
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    logger = logging.getLogger(name)
    if "SLURM_JOB_ID" in os.environ:  # where a cluster job ran: the SLURM test and users' audits read this
        logger.info("SLURM job %s on partition %s, node %s", os.environ["SLURM_JOB_ID"],
                    os.environ.get("SLURM_JOB_PARTITION", "?"), os.environ.get("SLURMD_NODENAME", "?"))
    try:
        yield logger
    except InputError as err:
        logger.error("%s", err)
        raise
    except BaseException:
        logger.exception("failed")
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


class ProgressLog:
    """Log 'done/total' at most every ``every_percent`` percent: a progress bar for log files."""

    def __init__(self, logger: logging.Logger, total: int, what: str, every_percent: float = 10.0):
        self.logger = logger
        self.total = max(int(total), 1)
        self.what = what
        self.step = max(1, int(self.total * every_percent / 100))
        self.done = 0

    def advance(self, n: int = 1) -> None:
        before = self.done
        self.done += n
        if self.done // self.step != before // self.step or self.done >= self.total:
            self.logger.info("%s: %d/%d (%.0f%%)", self.what, self.done, self.total,
                             100.0 * self.done / self.total)
