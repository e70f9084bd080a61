"""Load a fast BLAS before MLX on Linux.

MLX's Linux CPU wheel bundles a reference BLAS that is ~30x slower than
OpenBLAS for matmuls. If `libopenblas.so.0` is loaded with RTLD_GLOBAL *before*
`mlx.core` is imported, the dynamic linker resolves MLX's BLAS symbols to it.
This module must therefore run before anything imports `mlx.core`; the
`realign` package imports it first thing.

Set `REALIGN_NO_FAST_BLAS=1` to skip it (used to measure the difference).

Threads: OpenBLAS uses one thread per core unless told otherwise. `REALIGN_BLAS_THREADS=N` sets N at the
preload; `realign calibrate` measures training steps at each count and runs use its choice
(`hardware.profiles.apply_blas_threads`). On small matmuls, extra threads mostly spin: on the 2-core test
machine one thread trained the tiny model's DPO steps as fast as two, at half the CPU time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "sudo apt-get install -y libopenblas0-pthread"
DEBIAN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)


@dataclass(frozen=True)
class BlasStatus:
    """Outcome of the fast-BLAS preload.

    active: the library is mapped into this process.
    path: the library that was loaded (None when not loaded).
    reason: one line saying why it is or is not active.
    """

    active: bool
    path: str | None
    reason: str


_status: BlasStatus | None = None
_lib: ctypes.CDLL | None = None
THREADS_ENV = "REALIGN_BLAS_THREADS"


def _find_openblas() -> str | None:
    found = ctypes.util.find_library("openblas")
    if found:
        return found
    for candidate in DEBIAN_PATHS:
        if Path(candidate).exists():
            return candidate
    return None


def _mapped_openblas() -> str | None:
    """The path of an OpenBLAS mapped into this process, read from /proc."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        if "libopenblas" in line:
            return line.split()[-1]
    return None


def load_fast_blas() -> BlasStatus:
    """Preload OpenBLAS (Linux only), once per process; returns the status.

    Warns once, with the install command, when the library is missing or
    when `mlx.core` was imported before realign could preload it.
    """
    global _status
    if _status is not None:
        return _status
    if not sys.platform.startswith("linux"):
        _status = BlasStatus(False, None, f"not needed on {sys.platform} (MLX uses Accelerate/Metal)")
        return _status
    if os.environ.get("REALIGN_NO_FAST_BLAS") == "1":
        _status = BlasStatus(False, None, "disabled by REALIGN_NO_FAST_BLAS=1")
        return _status
    already = "mlx.core" in sys.modules
    lib = _find_openblas()
    if lib is None:
        _status = BlasStatus(False, None, f"libopenblas.so.0 not found; install it with: {INSTALL_HINT}")
        warnings.warn(
            f"realign: OpenBLAS not found, MLX matmuls on this CPU will be ~30x slower. "
            f"Install it with: {INSTALL_HINT}",
            RuntimeWarning,
            stacklevel=2,
        )
        return _status
    global _lib
    try:
        _lib = ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        _status = BlasStatus(False, None, f"could not load {lib}: {exc}; reinstall with: {INSTALL_HINT}")
        warnings.warn(f"realign: {_status.reason}", RuntimeWarning, stacklevel=2)
        return _status
    mapped = _mapped_openblas() or lib
    if already:
        # The linker already bound MLX to its bundled BLAS; loading now changes nothing.
        _status = BlasStatus(False, mapped, "mlx.core was imported before realign; import realign first")
        warnings.warn(f"realign: {_status.reason} to get the fast BLAS", RuntimeWarning, stacklevel=2)
        return _status
    _status = BlasStatus(True, mapped, f"OpenBLAS preloaded from {mapped}")
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted:
        try:
            set_blas_threads(int(wanted))
        except ValueError as exc:
            warnings.warn(f"realign: {THREADS_ENV}={wanted!r} ignored: {exc}", RuntimeWarning, stacklevel=2)
    return _status


def blas_status() -> BlasStatus:
    """The status of the preload done at `import realign`."""
    return load_fast_blas()


def blas_threads() -> int | None:
    """Threads the preloaded OpenBLAS uses now; None when it is not active (nothing to set)."""
    if _lib is None or not load_fast_blas().active:
        return None
    return int(_lib.openblas_get_num_threads())


def set_blas_threads(n: int) -> None:
    """Use `n` OpenBLAS threads from now on (a no-op when the fast BLAS is not active). ValueError when n < 1."""
    if n < 1:
        raise ValueError(f"a thread count is at least 1, got {n}")
    if _lib is not None and load_fast_blas().active:
        _lib.openblas_set_num_threads(ctypes.c_int(n))
