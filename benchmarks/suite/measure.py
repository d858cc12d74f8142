"""Wall time and peak memory of one stage, run as its own process.

Every stage of every tool runs in a fresh process so that its peak resident memory is its own and
its wall time includes the imports a user pays too. Linux reports a child's peak memory as at
least its parent's resident size at the fork, so the stage is not started from the suite's own
(large) process but from this file run as a tiny launcher (``python -I measure.py USAGE -- cmd``):
it starts the command, waits for it with ``os.wait4`` (``ru_maxrss`` and the CPU times cover the
command and the children it waited for) and writes wall time, peak memory and CPU time to USAGE. Standard library only:
this module is also imported by the ultrack runner under ultrack's virtual environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent
BENCHMARKS = SUITE_DIR.parent
REPO = BENCHMARKS.parent


class StageFailed(RuntimeError):
    """A stage's process exited non-zero; the message ends with the tail of its log."""


@dataclass(frozen=True)
class Stage:
    """One measured stage: wall seconds, peak resident memory (MiB) and CPU seconds (user + system,
    the stage's children included) of its process. CPU time hardly moves when another job shares
    the machine; wall time does."""

    seconds: float
    max_rss_mb: float
    cpu_s: float

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def suite_env() -> dict[str, str]:
    """Environment for stage processes: ``suite`` (benchmarks/) and ``celltrails`` (workflow/) importable."""
    paths = [str(BENCHMARKS), str(REPO / "workflow"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def run_stage(command: list[str], log: Path, timeout: float = 3600.0) -> Stage:
    """Run ``command`` to completion through the launcher, output to ``log``; raise StageFailed on a
    non-zero exit and TimeoutError (after stopping it) past ``timeout`` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    usage = log.with_suffix(".usage.json")
    usage.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", str(Path(__file__).resolve()), str(usage), "--", *command]
    with log.open("w") as out:
        process = subprocess.Popen(launcher, stdout=out, stderr=subprocess.STDOUT, env=suite_env(),
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except BaseException as err:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if isinstance(err, subprocess.TimeoutExpired):
                raise TimeoutError(f"stopped after {timeout:g} s: {' '.join(command[:4])} ... (log {log})") from None
            raise
    if process.returncode != 0 or not usage.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise StageFailed(f"{' '.join(command[:4])} ... exited {process.returncode} (log {log}):\n{tail}")
    measured = json.loads(usage.read_text())
    return Stage(measured["seconds"], measured["max_rss_kb"] / 1024.0, measured["cpu_s"])


def python_stage(module: str, args: list[str], log: Path, python: str = sys.executable,
                 timeout: float = 3600.0) -> Stage:
    """Run ``python -m suite.<module> args`` as a measured stage."""
    return run_stage([python, "-m", f"suite.{module}", *args], log, timeout=timeout)


def _launch(usage: Path, command: list[str]) -> int:
    """The launcher: run ``command``, record its wall time and peak memory in ``usage``."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, rusage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        usage.write_text(json.dumps({"seconds": seconds, "max_rss_kb": rusage.ru_maxrss,
                                     "cpu_s": rusage.ru_utime + rusage.ru_stime}))
    return code


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: python -I measure.py USAGE.json -- command ...")
    sys.exit(_launch(Path(sys.argv[1]), sys.argv[3:]))
