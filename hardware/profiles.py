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


def apply_blas_threads(model_path: str, tiny: dict | None = None) -> str:
    """Use the OpenBLAS thread count `realign calibrate` chose on this machine, when its calibration was measured on
    a model like this one (the best count depends on the matmul sizes); returns what was done, in words.
    model_path: the run's base model directory, or "tiny" with `tiny` its TinyModelConfig fields."""
    from hardware.calibrate import calibration_applies, model_key_of
    from hardware.sizing import size_from_config
    from realign._blas import THREADS_ENV, blas_threads, set_blas_threads
    from realign.model.tiny import TinyModelConfig, tiny_config

    current = blas_threads()
    if current is None:
        return "OpenBLAS threads: not set (no fast BLAS in this process)"
    if os.environ.get(THREADS_ENV):
        return f"OpenBLAS threads: {current} ({THREADS_ENV})"
    data = load_calibration()
    chosen = ((data or {}).get("blas_threads") or {}).get("chosen")
    if not chosen:
        return f"OpenBLAS threads: {current}, one per core (uncalibrated: `realign calibrate` measures the best count)"
    key = (
        size_from_config(tiny_config(TinyModelConfig(**(tiny or {})))).key()
        if model_path == "tiny"
        else model_key_of(model_path)
    )
    applies, why = calibration_applies(data, key) if key is not None else (False, "the model has no config.json")
    if not applies:
        return f"OpenBLAS threads: {current}, one per core (calibrated choice {chosen} not used: {why})"
    set_blas_threads(int(chosen))
    return f"OpenBLAS threads: {chosen}, as calibrated ({why})"
