"""This machine: what it is (detection), which known profile it matches, and its calibrated profile on disk."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from hardware.config import HardwareConfig, MachineProfile


@dataclass
class DetectedMachine:
    system: str  # Darwin / Linux
    chip: str  # "Apple M4 Max", or the Linux CPU model name
    memory_gb: float
    cpus: int


def _sysctl(name: str) -> str:
    return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, check=True).stdout.strip()


def detect() -> DetectedMachine:
    """Chip and memory of this machine (macOS via sysctl, Linux via /proc)."""
    system = platform.system()
    cpus = os.cpu_count() or 1
    if system == "Darwin":
        return DetectedMachine(system, _sysctl("machdep.cpu.brand_string"), int(_sysctl("hw.memsize")) / 1e9, cpus)
    chip, mem = platform.processor() or platform.machine(), 0.0
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        chip = m.group(1).strip() if m else chip
        kb = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = int(kb.group(1)) * 1024 / 1e9 if kb else 0.0
    except OSError:
        pass
    return DetectedMachine(system, chip, mem, cpus)


def match_profile(machine: DetectedMachine, hw: HardwareConfig | None = None) -> MachineProfile | None:
    """The known profile whose chip name this machine reports (e.g. 'Apple M4 Max'), else None (a generic machine)."""
    hw = hw or HardwareConfig()
    for p in hw.machines:
        if p.chip.lower() in machine.chip.lower():
            return p
    return None


def profile_dir() -> Path:
    """Where calibrated profiles live: $REALIGN_PROFILE_DIR or ~/.realign/profiles."""
    return Path(os.environ.get("REALIGN_PROFILE_DIR", Path.home() / ".realign" / "profiles"))


def machine_key(machine: DetectedMachine | None = None) -> str:
    m = machine or detect()
    return re.sub(r"[^a-z0-9]+", "-", f"{platform.node()}-{m.chip}".lower()).strip("-")


def save_calibration(data: dict, machine: DetectedMachine | None = None) -> Path:
    """Write this machine's calibration JSON atomically; returns the path."""
    from realign.io import atomic_path

    m = machine or detect()
    path = profile_dir() / f"{machine_key(m)}.json"
    with atomic_path(path, "w") as fh:
        fh.write(json.dumps({**data, "machine": asdict(m)}, indent=2))
    return path


def load_calibration(machine: DetectedMachine | None = None) -> dict | None:
    """This machine's calibration, or None when it has not been calibrated."""
    path = profile_dir() / f"{machine_key(machine)}.json"
    return json.loads(path.read_text()) if path.is_file() else None
