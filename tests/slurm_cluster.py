"""A real single-node SLURM cluster for the integration test: install, configure, start, stop.

As root on Debian (or Ubuntu): ``apt-get install slurm-wlm munge`` when ``sbatch`` is missing,
then a configuration in a folder of its own (``slurm.conf`` + ``gres.conf``: partitions ``cpu``
(default) and ``gpu`` on one node with one GRES gpu, declared with a ``File=`` line as slurmd
requires; no accounting database), munged, slurmctld and slurmd started on it. Everything the
cluster writes (state, spool, logs, pid files) stays in that folder, and :meth:`Cluster.stop`
shuts down exactly the daemons it started.

    python tests/slurm_cluster.py start /tmp/slurm   # prints the SLURM_CONF to export
    python tests/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
SYSTEM_CONF = Path("/etc/slurm")


def unavailable_reason() -> str | None:
    """Why a SLURM cluster cannot be stood up here (None when it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the SLURM integration test needs root (it installs and starts slurmctld, slurmd and munged)"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "the SLURM integration test needs SLURM installed or apt-get (Debian/Ubuntu) to install it"
    return None


def _run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, **kwargs)


def install() -> None:
    """apt-get install slurm-wlm and munge unless sbatch is already there."""
    if shutil.which("sbatch") and shutil.which("munged"):
        return
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", env=env)
    _run("apt-get", "install", "-y", "--no-install-recommends", *PACKAGES, env=env)


def _node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MB with a margin) as slurmd reports them for this machine."""
    report = _run("slurmd", "-C").stdout
    cpus = int(re.search(r"CPUs=(\d+)", report).group(1))
    memory = int(re.search(r"RealMemory=(\d+)", report).group(1))
    return cpus, max(1000, int(memory * 0.9))


class Cluster:
    """One node (``localhost``), partitions ``cpu`` and ``gpu``, configured and run from ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.conf = self.folder / "slurm.conf"
        self.env = os.environ | {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "fake_gpu0").touch()  # slurmd checks that the GRES File= exists
        cpus, memory = _node_resources()
        d = self.folder
        self.conf.write_text(f"""\
ClusterName=celltrails-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmdSpoolDir={d}/spool
StateSaveLocation={d}/state
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
NodeName=localhost CPUs={cpus} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
""")
        (self.folder / "gres.conf").write_text(f"NodeName=localhost Name=gpu File={d}/fake_gpu0\n")
        # Commands inside jobs (the plugin's srun) read the default location, whatever the job's environment.
        for name in ("slurm.conf", "gres.conf"):
            system = SYSTEM_CONF / name
            if system.is_symlink() or not system.exists():
                SYSTEM_CONF.mkdir(parents=True, exist_ok=True)
                system.unlink(missing_ok=True)
                system.symlink_to(self.folder / name)
            elif system.resolve() != (self.folder / name):
                raise RuntimeError(f"{system} exists and is not ours: refusing to replace a real cluster's configuration")

    def _start_munge(self) -> None:
        if _run("pgrep", "-x", "munged", check=False).returncode == 0:
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            _run("mungekey", "--create", "--keyfile", str(key))
        for path in ("/etc/munge", "/var/lib/munge", "/var/log/munge", "/run/munge"):
            Path(path).mkdir(parents=True, exist_ok=True)
            shutil.chown(path, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        _run("runuser", "-u", "munge", "--", "munged")
        (self.folder / "munge" / "started_here").touch()

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start the daemons and wait until the node is idle."""
        self.write_config()
        self._start_munge()
        _run("slurmctld", "-f", str(self.conf), env=self.env)
        _run("slurmd", "-f", str(self.conf), env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = _run("sinfo", "-h", "-n", "localhost", "-o", "%t", check=False, env=self.env).stdout.strip()
            if state.startswith("idle"):
                return
            if state.startswith(("drain", "down", "inval")):
                _run("scontrol", "update", "nodename=localhost", "state=resume", check=False, env=self.env)
            time.sleep(1)
        raise RuntimeError(f"the SLURM node did not become idle in {timeout:.0f} s; see {self.folder}/slurmd.log "
                           f"and slurmctld.log (last state: {state!r})")

    def stop(self) -> None:
        """Shut down slurmctld and slurmd (and munged if this cluster started it)."""
        _run("scontrol", "shutdown", check=False, env=self.env)
        for name in ("slurmd.pid", "slurmctld.pid"):
            pid_file = self.folder / name
            if pid_file.exists():
                _run("kill", pid_file.read_text().strip(), check=False)
        if (self.folder / "munge" / "started_here").exists():
            _run("pkill", "-x", "munged", check=False)
        for name in ("slurm.conf", "gres.conf"):
            system = SYSTEM_CONF / name
            if system.is_symlink() and system.resolve() == (self.folder / name):
                system.unlink()


def main() -> None:
    action, folder = sys.argv[1], sys.argv[2]
    cluster = Cluster(folder)
    if action == "start":
        if reason := unavailable_reason():
            sys.exit(reason)
        install()
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    elif action == "stop":
        cluster.stop()
    else:
        sys.exit(f"unknown action {action!r}: start or stop")


if __name__ == "__main__":
    main()
