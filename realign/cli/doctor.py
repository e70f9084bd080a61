"""`realign doctor`: what this machine is and how fast MLX runs on it."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass

from hardware.calibrate import measure_matmul_gflops
from hardware.profiles import load_calibration
from realign._blas import THREADS_ENV, blas_status, blas_threads


@dataclass
class DoctorReport:
    """Facts about the runtime. gflops: measured float32 matmul throughput (1e9 flop/s)."""

    platform: str
    python: str
    cpu_count: int
    memory_gb: float | None
    mlx_version: str
    mlx_lm_version: str
    device: str
    fast_blas_active: bool
    fast_blas: str
    matmul_size: int
    matmul_seconds: float
    gflops: float
    blas_threads: int | None  # OpenBLAS threads in use now; None without the fast BLAS
    blas_threads_calibrated: dict | None  # `realign calibrate`'s thread sweep (chosen, steps/s, CPU s per step)
    environment: dict

    def as_dict(self) -> dict:
        return asdict(self)


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def run_doctor(matmul_size: int = 1024) -> DoctorReport:
    """Collect the report (takes about a second: it times real matmuls)."""
    import mlx.core as mx
    import mlx_lm

    status = blas_status()
    gflops, per = measure_matmul_gflops(matmul_size)
    watched = ("MLX_METAL_PREALLOCATE", "MLX_METAL_FAST_SYNCH", "TOKENIZERS_PARALLELISM", "REALIGN_NO_FAST_BLAS")
    watched += (THREADS_ENV,)
    calibration = load_calibration() or {}
    return DoctorReport(
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=sys.version.split()[0],
        cpu_count=os.cpu_count() or 0,
        memory_gb=_memory_gb(),
        mlx_version=mx.__version__,
        mlx_lm_version=mlx_lm.__version__,
        device=str(mx.default_device()),
        fast_blas_active=status.active,
        fast_blas=status.reason,
        matmul_size=matmul_size,
        matmul_seconds=per,
        gflops=gflops,
        blas_threads=blas_threads(),
        blas_threads_calibrated=calibration.get("blas_threads"),
        environment={k: os.environ.get(k, "(unset)") for k in watched},
    )
