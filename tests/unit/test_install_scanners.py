"""The install is hardened and stays so: hadolint on the Dockerfile, checkov on the manifests
and the Dockerfile (every skip carries its reason where it is made), a base image pinned by
digest, and every Python package of the image locked with its hashes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements.lock"
CHECKOV = REPO / ".venv-scan" / "bin" / "checkov"


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} not found: `make test` installs it (pyproject.toml test extras)"
    return found


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def run_checkov(*target: str, framework: str) -> dict[str, Any]:
    assert CHECKOV.exists(), "checkov not installed: run `make scan-tools` (make test does)"
    result = subprocess.run(
        [str(CHECKOV), *target, "--framework", framework, "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    report = json.loads(result.stdout)
    assert isinstance(report, dict) and report["check_type"] == framework, result.stderr[-2000:]
    failed = [(c["check_id"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 0 and report["summary"]["parsing_errors"] == 0
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, (skipped["check_id"], "a skip needs its reason")
    assert result.returncode == 0
    return report


def test_checkov_finds_nothing_in_the_manifests() -> None:
    """deploy/ (the kustomize base and the namespaced overlay)."""
    report = run_checkov("--directory", str(REPO / "deploy"), framework="kubernetes")
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15"}


def test_checkov_finds_nothing_in_the_dockerfile() -> None:
    report = run_checkov("--file", str(DOCKERFILE), framework="dockerfile")
    assert {c["check_id"] for c in report["results"]["skipped_checks"]} <= {"CKV_DOCKER_2"}


def test_the_base_image_is_pinned_by_digest() -> None:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert froms and all(re.search(r"@sha256:[0-9a-f]{64}$", image) for image in froms), froms


def test_every_pip_install_in_the_image_is_hash_checked_or_offline() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    commands = re.findall(r"pip (?:install|download|wheel)[^&\n]*", text)
    assert commands
    for command in commands:
        assert "--require-hashes" in command or (
            "--no-index" in command and "--no-deps" in command
        ), command


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = {_name(r) for r in pyproject["project"]["dependencies"]}
    wanted |= {_name(r) for r in pyproject["build-system"]["requires"]}
    entries = re.findall(
        r"^([A-Za-z0-9._-]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)",
        LOCK.read_text(),
        flags=re.MULTILINE,
    )
    pinned = {name.lower().replace("_", "-") for name, _, _ in entries}
    assert wanted <= pinned, f"not in requirements.lock (run `make lock`): {wanted - pinned}"
    requirement_lines = [
        line for line in LOCK.read_text().splitlines() if line and not line.startswith((" ", "#"))
    ]
    assert len(requirement_lines) == len(entries), "every requirement has == and its hashes"
