"""The package's shape, as issue 7 asks for it: short functions, small modules, imports one way.

The sandbox (emulators, leaving the operator's package) and demo.py are not held to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "keyrotor"
EXCLUDED = ("sandbox", "demo.py")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# One file by design (DESIGN.md: "one module ... shipped as the Lambda's code", zipped alone as
# lambda_function.py), its safety rules in its docstring: it cannot be split into modules.
ONE_FILE_BY_DESIGN = {"rotation_lambda"}

# Layers, top to bottom: a module may import only from its own layer's named peers or below.
LAYERS: list[set[str]] = [
    {
        "cli",
        "operator_main",
        "policy_command",
        "ctl",
        "ctl_status",
        "ctl_rotate",
        "audit",
        "audit_command",
    },
    {"handlers", "metrics_watch"},
    {"sync", "deletion", "event_consumer", "event_push", "decisions"},
    {"reconcile"},
    {"executor", "status"},
    {"runtime", "installation"},
    {"index", "claims"},
    {"aws", "k8s"},
    {"policies", "reads"},
    {"mirroring", "refusals", "secret_events"},
    {"outcome", "errors", "metrics"},
    {"conditions", "tenancy", "observation"},
    {"model", "settings", "rotation_lambda", "kms_keys", "shards", "allocator"},
]


def _modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if not any(part in EXCLUDED for part in p.relative_to(PACKAGE).parts)
    ]


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for depth, names in enumerate(LAYERS):
        if top in names:
            return depth
    raise AssertionError(f"keyrotor.{module} is in no layer of {__file__}")


def _name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_no_module_over_400_lines(path: Path) -> None:
    if _name(path) in ONE_FILE_BY_DESIGN:
        pytest.skip("shipped as one file (the rotation Lambda)")
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_no_function_over_60_lines(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_imports_run_one_way(path: Path) -> None:
    me = _name(path)
    if me == "__init__" or me.endswith(".__init__"):
        return
    mine = _layer(me)
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keyrotor"):
            targets = (
                [f"{node.module}.{a.name}" for a in node.names]
                if node.module == "keyrotor"
                else [node.module]
            )
            for target in targets:
                other = target.removeprefix("keyrotor").lstrip(".")
                if other.split(".")[0] in ("sandbox", "demo") or other.startswith("_sandbox"):
                    continue
                if _layer(other) < mine or (other.split(".")[0] == me.split(".")[0] == "sync"):
                    wrong.append(other)
    assert not wrong, f"keyrotor.{me} imports upwards: {wrong}"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_no_private_names_across_modules(path: Path) -> None:
    """sync and reconcile (and every other module) use each other's public names only."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keyrotor"):
            assert not [a.name for a in node.names if a.name.startswith("_")]
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("reconcile", "sync", "policies", "mirroring", "executor")
        ):
            assert not node.attr.startswith("_"), f"{node.value.id}.{node.attr}"
