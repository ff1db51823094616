"""What ships: the operator's wheel holds only what runs in production; moto is the pinned one.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation --no-index``, with the
setuptools of the test environment) from a copy of exactly what the Dockerfile copies
(pyproject.toml, README.md, operator/), so the build leaves nothing in the working tree.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from keyrotor_sandbox import aws as sandbox_aws

REPO = Path(__file__).resolve().parents[2]


def _imported_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.fixture(scope="module")
def operator_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    # What the Dockerfile's build stage copies, nothing else.
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(
        REPO / "operator",
        source / "operator",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("keyrotor-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_operator_wheel_holds_no_sandbox_demo_or_moto(operator_wheel: Path) -> None:
    with zipfile.ZipFile(operator_wheel) as wheel:
        names = wheel.namelist()
        sources = {name: wheel.read(name).decode() for name in names if name.endswith(".py")}
        metadata = next(
            wheel.read(name).decode() for name in names if name.endswith(".dist-info/METADATA")
        )
    assert "keyrotor/cli.py" in names  # the right wheel, and not empty
    assert "keyrotor/rotation_lambda.py" in names
    packages = {name.split("/", 1)[0] for name in names if not name.endswith("dist-info")}
    assert not any(p.startswith("keyrotor_sandbox") for p in packages), packages
    unwanted = [n for n in names if re.search(r"(^|/)(sandbox|demo)(/|\.py$)", n)]
    assert unwanted == []
    for name, source in sources.items():
        imported = _imported_modules(source)
        assert not {m for m in imported if m == "moto" or m.startswith("moto.")}, name
    # No dependency, extras included, brings moto in.
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [line for line in requires if "moto" in line.lower()]


def test_operator_reaches_the_sandbox_only_from_the_demo_command(operator_wheel: Path) -> None:
    """``keyrotor demo`` imports the sandbox when it runs; no module imports it at load time."""
    with zipfile.ZipFile(operator_wheel) as wheel:
        sources = {n: wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".py")}
    for name, source in sources.items():
        tree = ast.parse(source)
        top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        for node in top_level:
            modules = _imported_modules(ast.unparse(node))
            assert not [m for m in modules if m.startswith("keyrotor_sandbox")], name


def test_demo_without_the_sandbox_says_what_to_install_in_one_line() -> None:
    # The operator's image has no sandbox: make its import fail as it would there.
    code = (
        "import sys; sys.modules['keyrotor_sandbox'] = None; "
        "from keyrotor.cli import main; sys.exit(main(['demo']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "sandbox is not installed" in lines[0]
    assert "pip install -e ./sandbox" in lines[0] and "make demo" in lines[0]


def test_moto_is_exactly_the_version_the_sandbox_fixes_were_written_against() -> None:
    pinned = sandbox_aws.MOTO_VERSION
    installed = importlib.metadata.version("moto")
    assert installed == pinned, (
        f"moto {installed} is installed, but every fix in keyrotor_sandbox/aws.py patches moto "
        f"{pinned}'s internals. Check each numbered fix (its test in "
        f"tests/integration/test_aws_emulator.py, and the tests showing plain moto still needs "
        f"it) against moto {installed}, then change MOTO_VERSION and the pin in "
        f"sandbox/pyproject.toml together; or reinstall with `pip install -e ./sandbox`."
    )
    project = tomllib.loads((REPO / "sandbox" / "pyproject.toml").read_text())["project"]
    moto = [d for d in project["dependencies"] if re.match(r"moto\b", d)]
    assert moto == [f"moto[server]=={pinned}"], "sandbox/pyproject.toml must pin moto exactly"
    assert f"moto {pinned}" in (sandbox_aws.__doc__ or ""), "the docstring names the release"
    root = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    everything = list(root["dependencies"])
    for extra in root["optional-dependencies"].values():
        everything += extra
    assert not [d for d in everything if "moto" in d], "moto is pinned in one place: the sandbox"
