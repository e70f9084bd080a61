"""The project layout of SPEC.md, the README's two commands, and the demo."""

import re
import tomllib

import yaml

from conftest import REPO


def test_layout_matches_the_design_card():
    for f in ("pyproject.toml", "prefect.yaml", "README.md", "Makefile", ".ci/run"):
        assert (REPO / f).is_file(), f
    for pkg in ("realign", "tasks", "gates", "flows", "hardware"):
        assert (REPO / pkg / "__init__.py").is_file(), pkg
    for d in ("deployments", "bench", "tests"):
        assert (REPO / d).is_dir(), d


def test_readme_shows_the_two_commands_first():
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:bash)?\n(.*?)```", text, re.S).group(1)
    assert [x.split("#")[0].strip() for x in first_block.strip().splitlines()] == ["make demo", "make test"]
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", make, re.M) and re.search(r"^test:", make, re.M)
    assert "make test" in (REPO / ".ci/run").read_text()


def test_packaging_pins_and_console_script():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = " ".join(meta["dependencies"])
    for pin in (
        "prefect>=3.8,<3.9",
        "fastapi==0.150.0",
        "sqlalchemy[asyncio]>=2.0,<2.1",
        "great-expectations>=1.24,<1.25",
        "mlx-lm>=0.32,<0.33",
        "mlx[cpu]>=0.30; sys_platform == 'linux'",
        "mlx>=0.30; sys_platform == 'darwin'",
    ):
        assert pin in deps, pin
    assert meta["scripts"]["realign"] == "realign.cli:main"
    assert meta["requires-python"] == ">=3.11"


def test_prefect_yaml_parses():
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert doc["name"] == "realign" and isinstance(doc["deployments"], list)
