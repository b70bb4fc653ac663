"""Facts about the machine and the software (cores, CPU flags, load, versions), recorded with every section."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from .runner import ROOT


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags() -> list[str]:
    """The CPU features the figures depend on (AMX, AVX-512 bf16/VNNI, AVX2), of ``envcheck.cpu_flags``."""
    from poetry_gpt.envcheck import cpu_flags as all_flags

    return sorted(f for f in all_flags() if f.startswith("amx") or f in ("avx512f", "avx512_bf16", "avx512_vnni", "avx2"))


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1e6, 1)
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """The cores this process may run on (``poetry_gpt.train.cores.usable_cores``: the rule ``train`` uses)."""
    from poetry_gpt.train.cores import usable_cores as cores

    return cores()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts() -> dict:
    return {"cpu": _cpu_model(), "cores": os.cpu_count(),
            "cores_usable": usable_cores(),
            "cpu_flags": cpu_flags(), "memory_gb": _mem_total_gb(), "platform": platform.platform()}


def versions() -> dict:
    """What a run records (``envcheck.versions``), plus the baselines' torch, numpy and the git commit."""
    from poetry_gpt.envcheck import _version, versions as run_versions

    out = {**run_versions(), **{dist: _version(dist) for dist in ("torch", "numpy")}}
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["git_commit"] = (commit + ("+local-changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def section_context(load_before: list[float], command: list[str]) -> dict:
    """Machine facts, versions and the command line, recorded with every section."""
    return {"machine": {**machine_facts(), "load_average_before": load_before, "load_average_after": load_average()},
            "versions": versions(), "command": command}
