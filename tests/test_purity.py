"""Layering rules: the core `realign/` (outside its cli/) imports no orchestration, and tasks/ hold no model code.

realign/ outside cli/ never imports prefect, great_expectations, flows, tasks, gates or hardware;
tasks/ never import mlx (computation lives in realign/, tasks read, call, write and return), and
flows/ neither run models nor build tables (they list the stages).
"""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE_FORBIDDEN = ("prefect", "great_expectations", "flows", "tasks", "gates", "hardware")
TASKS_FORBIDDEN = ("mlx", "mlx_lm")
FLOWS_FORBIDDEN = ("mlx", "mlx_lm", "pandas", "numpy")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


def _core_files() -> list[Path]:
    return sorted(p for p in (REPO / "realign").rglob("*.py") if "cli" not in p.relative_to(REPO / "realign").parts)


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} imports {name}"
        for path in files
        for name in sorted(_imported_modules(path))
        if name.split(".")[0] in forbidden
    ]


def test_core_imports_no_orchestration_and_no_app_packages():
    files = _core_files()
    assert len(files) >= 20  # the scan found the package, not an empty directory
    assert _offenders(files, CORE_FORBIDDEN) == []


def test_tasks_import_no_mlx():
    files = sorted((REPO / "tasks").rglob("*.py"))
    assert len(files) >= 8
    assert _offenders(files, TASKS_FORBIDDEN) == []


def test_flows_build_no_tables_and_run_no_models():
    files = sorted((REPO / "flows").glob("*.py"))
    assert _offenders(files, FLOWS_FORBIDDEN) == []
    assert len((REPO / "flows" / "dpo.py").read_text().splitlines()) <= 90  # the seven stages, readable at a glance


def test_importing_every_core_module_loads_none_of_them():
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in _core_files()]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {CORE_FORBIDDEN!r})\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_detector_catches_a_forbidden_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import os\nfrom prefect import flow\nimport importlib\nimportlib.import_module('great_expectations')\n"
        "from hardware.profiles import detect\nimport mlx.core as mx\n"
    )
    assert _offenders([f], CORE_FORBIDDEN) and len(_offenders([f], CORE_FORBIDDEN)) == 3
    assert {"prefect", "great_expectations", "hardware.profiles", "mlx.core"} <= _imported_modules(f)
    assert _offenders([f], TASKS_FORBIDDEN) == [f"{f} imports mlx.core"]
