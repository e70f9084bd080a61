"""What produced a run: package versions, the interpreter and platform, and the git commit of the code."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("realign", "mlx", "mlx-lm", "prefect", "great-expectations", "numpy")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path) -> dict[str, str | bool | None]:
    """HEAD of the checkout `repo` belongs to and whether its tracked files differ from it (None when `repo` is not
    in a git checkout or git is missing: said, not guessed)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": head, "uncommitted_changes": bool(dirty)}


def provenance() -> dict:
    """Versions, interpreter, platform, git commit of this realign checkout, and the time."""
    return {
        "versions": {p: _version(p) for p in PACKAGES},
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "git": git_commit(Path(__file__).resolve().parent.parent),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
