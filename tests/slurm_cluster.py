"""A real one-node SLURM cluster on this machine, for tests: Debian's slurm-wlm and munge,
installed with apt if missing, started as root with a generated slurm.conf, stopped after.

``start`` returns the environment (SLURM_CONF) clients need, or raises ``Unavailable`` with the
reason (not root, no apt, daemons that do not come up) so the test is skipped saying why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PARTITION = "debug"


class Unavailable(RuntimeError):
    pass


def _run(*cmd: str, timeout: int = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def install() -> None:
    if shutil.which("slurmctld") and shutil.which("munged") and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        raise Unavailable("slurm-wlm is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise Unavailable("slurm-wlm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    packages = ("apt-get", "install", "-y", "-q", "slurm-wlm", "munge")
    if _run(*packages, check=False, env=env).returncode != 0:
        _run("apt-get", "update", "-q", check=False, env=env)
        result = _run(*packages, check=False, env=env)
        if result.returncode != 0:
            raise Unavailable(f"apt-get install slurm-wlm munge failed: {result.stderr[-300:]}")


def _munge() -> None:
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if _run("munge", "-n", check=False).returncode != 0:  # not running yet
        _run("munged", "--force", check=False)
        for _ in range(20):
            if _run("munge", "-n", check=False).returncode == 0:
                return
            time.sleep(0.25)
        raise Unavailable("munged did not start")


def write_conf(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=dpresearch
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def start(folder: Path) -> dict[str, str]:
    if os.geteuid() != 0:
        raise Unavailable("starting slurmctld/slurmd here needs root")
    install()
    _munge()
    conf = write_conf(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        result = _run(daemon, "-f", str(conf), check=False, env=env)
        if result.returncode != 0:
            raise Unavailable(f"{daemon} did not start: {result.stderr[-300:]}")
    for _ in range(60):
        out = _run("sinfo", "-h", "-o", "%T", check=False, env=env).stdout.split()
        if out and out[0] in ("idle", "mixed"):
            return env
        time.sleep(0.5)
    stop(folder)
    log = (
        (folder / "slurmctld.log").read_text()[-500:] if (folder / "slurmctld.log").exists() else ""
    )
    raise Unavailable(f"the SLURM node did not become idle: {log}")


def stop(folder: Path) -> None:
    for name in ("slurmd", "slurmctld"):
        pid = folder / f"{name}.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass
    time.sleep(1)
