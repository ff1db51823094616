"""README's first command: `keyrotor demo` runs the whole loop and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.kube]


def test_demo_runs_the_whole_loop() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyrotor.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"{output[-3000:]}\n{result.stderr[-3000:]}"
    assert re.search(r"Ready\s+True\s+Ready", output)
    first, second = re.findall(r"AWS_ACCESS_KEY_ID=(AKIA\w+)", output)
    assert first != second
    assert f"previous {first}: Inactive" in output
    assert f"current  {second}: Active" in output
    assert output.count("sts get-caller-identity with the mirrored key: arn:aws:iam::") == 2
    assert "restarted for version" in output
    assert "scheduled for deletion" in output
    assert "went with its owner" in output
    assert "Done:" in output
