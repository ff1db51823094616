"""Run ``keyrotor run`` as it runs in production: a separate process, its own kubeconfig (the
operator's RBAC identity) and AWS endpoint, logs captured to a file. Used by the end-to-end tests
and ``keyrotor demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self


class OperatorProcess:
    """``keyrotor run`` in a child process; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        *,
        kubeconfig: str | os.PathLike[str],
        aws_environ: Mapping[str, str],
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.aws_environ = dict(aws_environ)
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.log_path = (
            Path(log_path)
            if log_path
            else Path(tempfile.mkstemp(prefix="keyrotor-", suffix=".log")[1])
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "KEYROTOR_", "KUBECONFIG"))
        }
        env.update(self.aws_environ)
        env.update(self.extra_env)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        self._process = subprocess.Popen(
            [sys.executable, "-m", "keyrotor.cli", "run", *self.args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crashed or evicted pod: no clean-up handlers run."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=30)
        code = self._process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return True
            if not self.running():
                return False
            time.sleep(0.2)
        return False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
