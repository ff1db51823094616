"""A real Kubernetes API server on loopback: etcd + kube-apiserver (+ kube-controller-manager).

The Python counterpart of controller-runtime's envtest, used by the test suite and by
``keyrotor demo``. No kubelet, no containers: only the API machinery, so CRD schema and CEL
validation, the status subresource, finalizers, resourceVersion conflicts, server-side apply,
watches and RBAC are the real ones.

Binaries, in this order:

1. ``KUBEBUILDER_ASSETS`` names a folder holding ``kube-apiserver`` and ``etcd`` (as
   ``setup-envtest`` makes); ``kube-controller-manager`` there is used if present.
2. The cache folder for the pin in ``tests/envtest/go.mod``:
   ``$KEYROTOR_ENVTEST_CACHE`` (default ``~/.cache/keyrotor/envtest``) ``/k8s-<v>-etcd-<v>/``.
3. Otherwise they are built into that folder with ``tests/envtest/build.sh`` (needs Go and the
   Go module proxy; a few minutes cold). The recipe is found by walking up from this file to the
   repository, or at ``$KEYROTOR_ENVTEST_DIR``.

Usage::

    with KubeApiServer(extra_crds=["tests/fixtures/test_crd.yaml"]) as kube:
        api = kube.admin_client()          # kubernetes.client.ApiClient, system:masters
        kube.operator_kubeconfig           # identity system:serviceaccount:keyrotor-system:keyrotor

Everything listens on 127.0.0.1 on free ports. ``stop()`` (and leaving the ``with`` block) always
stops every process and removes the data folder; the process logs are kept (and their folder
named) only when start-up failed or a process died on its own.

From a shell: ``python -m keyrotor_sandbox.kube build`` (build or find the binaries, print their
folder) and ``python -m keyrotor_sandbox.kube run`` (start, print the kubeconfigs, wait for Ctrl-C).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TextIO, TypeVar

import yaml

__all__ = [
    "ADMIN_GROUPS",
    "ADMIN_USER",
    "DEFAULT_CONTROLLERS",
    "OPERATOR_GROUPS",
    "OPERATOR_USER",
    "Binaries",
    "KubeApiServer",
    "KubeStartupError",
    "ensure_binaries",
    "find_recipe",
    "pinned_versions",
]

ENV_ASSETS = "KUBEBUILDER_ASSETS"
ENV_CACHE = "KEYROTOR_ENVTEST_CACHE"
ENV_RECIPE = "KEYROTOR_ENVTEST_DIR"

# Used only to find an already built cache folder when the recipe (go.mod) is not at hand,
# e.g. when keyrotor is installed from a wheel. tests/envtest/go.mod is the source of truth.
FALLBACK_K8S_VERSION = "1.34.4"
FALLBACK_ETCD_VERSION = "3.6.4"

ADMIN_USER = "keyrotor-envtest-admin"
ADMIN_GROUPS = ("system:masters", "system:authenticated")
# Named like the operator's ServiceAccount, so bindings in deploy/ that name
# ServiceAccount keyrotor in keyrotor-system apply to this identity.
OPERATOR_USER = "system:serviceaccount:keyrotor-system:keyrotor"
OPERATOR_GROUPS = (
    "system:serviceaccounts",
    "system:serviceaccounts:keyrotor-system",
    "system:authenticated",
)
# Owned objects are deleted in cascade (garbage collector) and deleted namespaces empty out.
DEFAULT_CONTROLLERS = ("garbage-collector-controller", "namespace-controller")

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
FIELD_MANAGER = "keyrotor-sandbox"

_POLL = 0.1
_T = TypeVar("_T")


class KubeStartupError(RuntimeError):
    """Start-up failed. ``str()`` is one line naming the cause (and the log file, if any).

    The last lines of that log are in ``log_tail`` and attached as an exception note.
    """

    def __init__(
        self, message: str, *, log_path: Path | None = None, log_tail: Sequence[str] = ()
    ) -> None:
        line = " ".join(message.split())
        if log_path is not None:
            line = f"{line} (log: {log_path})"
        super().__init__(line)
        self.log_path = log_path
        self.log_tail = list(log_tail)
        if self.log_tail:
            self.add_note("last lines of the log:\n" + "\n".join(self.log_tail))


# --------------------------------------------------------------------------------------------
# Binaries: KUBEBUILDER_ASSETS, the cache folder, or a build with the pinned recipe.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    directory: Path
    kube_apiserver: Path
    etcd: Path
    kube_controller_manager: Path | None
    source: str  # "KUBEBUILDER_ASSETS", "cache" or "built"


def find_recipe() -> Path | None:
    """The folder holding build.sh and go.mod (tests/envtest of the repository), if any."""
    env = os.environ.get(ENV_RECIPE)
    if env:
        path = Path(env).expanduser()
        if not (path / "build.sh").is_file() or not (path / "go.mod").is_file():
            raise KubeStartupError(f"{ENV_RECIPE}={env} holds no build.sh and go.mod")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tests" / "envtest"
        if (candidate / "build.sh").is_file() and (candidate / "go.mod").is_file():
            return candidate
    return None


def repo_root() -> Path | None:
    """The repository this package runs from (editable install), if any."""
    recipe = find_recipe()
    return recipe.parent.parent if recipe is not None else None


def default_crd_paths() -> list[Path]:
    """The repository's crds/ folder, if it holds YAML files."""
    root = repo_root()
    if root is None:
        return []
    crds = root / "crds"
    if crds.is_dir() and any(crds.glob("*.y*ml")):
        return [crds]
    return []


def pinned_versions(recipe: Path | None = None) -> tuple[str, str]:
    """(kubernetes, etcd) versions without the leading v, from the recipe's go.mod."""
    recipe = recipe if recipe is not None else find_recipe()
    if recipe is None:
        return FALLBACK_K8S_VERSION, FALLBACK_ETCD_VERSION
    text = (recipe / "go.mod").read_text()
    versions: dict[str, str] = {}
    for module in ("k8s.io/kubernetes", "go.etcd.io/etcd/server/v3"):
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+v(\S+)", text, re.M)
        if match is None:
            raise KubeStartupError(f"{recipe / 'go.mod'} does not pin {module}")
        versions[module] = match.group(1)
    return versions["k8s.io/kubernetes"], versions["go.etcd.io/etcd/server/v3"]


def cache_root() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "keyrotor" / "envtest"


def cache_dir(k8s_version: str, etcd_version: str) -> Path:
    return cache_root() / f"k8s-{k8s_version}-etcd-{etcd_version}"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _complete(directory: Path) -> bool:
    names = ("kube-apiserver", "kube-controller-manager", "etcd")
    return all(_executable(directory / name) for name in names)


def ensure_binaries(*, build: bool = True, progress: TextIO | None = None) -> Binaries:
    """Find the binaries, building them with the pinned recipe if needed and allowed.

    ``progress`` receives the build's progress lines (default: sys.stderr).
    """
    assets = os.environ.get(ENV_ASSETS)
    if assets:
        directory = Path(assets).expanduser()
        for name in ("kube-apiserver", "etcd"):
            if not _executable(directory / name):
                raise KubeStartupError(
                    f"{name} not found in {ENV_ASSETS}={assets} (expected an executable "
                    f"{directory / name}); point {ENV_ASSETS} at a folder holding kube-apiserver "
                    f"and etcd, or unset it to build them from tests/envtest"
                )
        kcm = directory / "kube-controller-manager"
        return Binaries(
            directory=directory,
            kube_apiserver=directory / "kube-apiserver",
            etcd=directory / "etcd",
            kube_controller_manager=kcm if _executable(kcm) else None,
            source=ENV_ASSETS,
        )

    recipe = find_recipe()
    k8s_version, etcd_version = pinned_versions(recipe)
    directory = cache_dir(k8s_version, etcd_version)
    source = "cache"
    if not _complete(directory):
        if not build:
            raise KubeStartupError(
                f"no kube-apiserver/etcd binaries in {directory} and building is off; "
                f"run `make -C tests/envtest` or set {ENV_ASSETS}"
            )
        if recipe is None:
            raise KubeStartupError(
                f"no kube-apiserver/etcd binaries in {directory} and no build recipe "
                f"(tests/envtest/build.sh) found; set {ENV_ASSETS} or {ENV_RECIPE}"
            )
        if shutil.which("go") is None:
            raise KubeStartupError(
                f"no kube-apiserver/etcd binaries in {directory} and `go` is not on PATH to build "
                f"them; install Go, or set {ENV_ASSETS} to a folder holding kube-apiserver and etcd"
            )
        # build.sh takes a lock and re-checks, so concurrent callers build once.
        _run_build(recipe, directory, progress if progress is not None else sys.stderr)
        source = "built"
    return Binaries(
        directory=directory,
        kube_apiserver=directory / "kube-apiserver",
        etcd=directory / "etcd",
        kube_controller_manager=directory / "kube-controller-manager",
        source=source,
    )


_GO_PACKAGE_LINE = re.compile(r"^[\w.\-~+]+(/[\w.\-~+]+)*$")


def _run_build(recipe: Path, out: Path, progress: TextIO) -> None:
    """Run tests/envtest/build.sh, reporting progress without flooding the terminal."""
    started = time.monotonic()

    def say(text: str) -> None:
        progress.write(f"[keyrotor envtest] {text}\n")
        progress.flush()

    say(f"building kube-apiserver, kube-controller-manager and etcd into {out} (several minutes)")
    env = dict(os.environ, ENVTEST_GO_BUILD_FLAGS="-v")
    tail: list[str] = []
    packages = downloads = 0
    last_report = started
    proc = subprocess.Popen(
        ["bash", str(recipe / "build.sh"), str(out)],
        cwd=recipe,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail = [*tail[-39:], line]
            if _GO_PACKAGE_LINE.match(line) or line.startswith("go: downloading"):
                if line.startswith("go: "):
                    downloads += 1
                else:
                    packages += 1
                now = time.monotonic()
                if now - last_report >= 15:
                    last_report = now
                    say(
                        f"{now - started:.0f}s: {downloads} modules downloaded, "
                        f"{packages} packages compiled"
                    )
            else:
                say(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        cause = next(
            (x for x in reversed(tail) if not _GO_PACKAGE_LINE.match(x)), f"exit status {rc}"
        )
        raise KubeStartupError(
            f"building the envtest binaries with {recipe / 'build.sh'} failed (exit {rc}): {cause}",
            log_tail=tail,
        )
    say(f"built in {time.monotonic() - started:.0f}s")


# --------------------------------------------------------------------------------------------
# Certificates, tokens, kubeconfigs
# --------------------------------------------------------------------------------------------


def _write_pki(directory: Path) -> None:
    """CA, serving cert for 127.0.0.1/localhost, service-account signing key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365)

    def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyrotor-envtest-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    names: list[x509.GeneralName] = [
        x509.DNSName(name)
        for name in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "serving.crt": cert.public_bytes(serialization.Encoding.PEM),
        "serving.key": private_pem(key),
        "sa.key": private_pem(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)


def _kubeconfig(url: str, ca_pem: bytes, user: str, token: str) -> dict[str, Any]:
    cluster, context = "keyrotor-envtest", f"keyrotor-envtest-{user}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": url,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
    }


# --------------------------------------------------------------------------------------------
# Processes and their logs
# --------------------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


_KLOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]+\] (.*)$")
_QUOTED = r'"((?:[^"\\]|\\.)*)"'


def _klog_text(message: str) -> str:
    """klog structured `"msg" err="..."` as `msg: ...`; other messages unchanged."""
    head = re.match(_QUOTED, message)
    if head is None:
        return message
    err = re.search(r"\berr=" + _QUOTED, message[head.end() :])
    parts = [head.group(1)] + ([err.group(1)] if err else [])
    with contextlib.suppress(ValueError):
        parts = [json.loads(f'"{part}"') for part in parts]
    return ": ".join(parts)


def _log_tail(path: Path, lines: int = 200) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _log_cause(lines: Sequence[str]) -> str | None:
    """The most telling error line of a Go server's log (cobra, zap JSON or klog format)."""
    ranked: dict[int, str] = {}
    for line in lines:
        text = line.strip()
        if text.startswith("Error: "):
            ranked[0] = text[len("Error: ") :]
        elif text.startswith("{"):
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            level = str(entry.get("level", ""))
            message = str(entry.get("msg", ""))
            if entry.get("error"):
                message = f"{message}: {entry['error']}"
            if level in ("fatal", "panic"):
                ranked[1] = message
            elif level == "error":
                ranked[3] = message
        else:
            match = _KLOG_LINE.match(text)
            if match and match.group(1) == "F":
                ranked[2] = _klog_text(match.group(2))
            elif match and match.group(1) == "E":
                ranked[4] = _klog_text(match.group(2))
            elif text.startswith(("panic: ", "fatal error: ")):
                ranked[1] = text
    for rank in sorted(ranked):
        return ranked[rank][:400]
    return lines[-1][:400] if lines else None


_libc: Any = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _load_libc() -> None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def exited(self) -> int | None:
        return self.popen.poll()

    def failure(self, what: str) -> KubeStartupError:
        tail = _log_tail(self.log_path)
        cause = _log_cause(tail) or "no output"
        return KubeStartupError(
            f"{self.name} {what}: {cause}", log_path=self.log_path, log_tail=tail[-15:]
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()


# --------------------------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------------------------


class KubeApiServer:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback. A context manager.

    Arguments:
        crds: YAML files or folders whose CustomResourceDefinitions are installed; None means
            the repository's crds/ folder (if it holds files). Other kinds in them are ignored.
        extra_crds: more of the same, installed too (e.g. a test CRD).
        controller_manager: start kube-controller-manager with ``controllers`` (garbage
            collector and namespace controller by default). None: if the binary is there.
        port, etcd_port, etcd_peer_port: fixed ports; default free ones.
        build: build missing binaries with the pinned recipe (see the module docstring).
        progress: where build progress goes (default sys.stderr).
        start_timeout: seconds each server gets to become ready.
        die_with_parent: on Linux, the servers get SIGTERM if the thread that started them
            exits (so a killed test run leaves nothing behind). Turn off when starting from a
            short-lived thread.
        extra_apiserver_args: appended to kube-apiserver's command line.
    """

    def __init__(
        self,
        *,
        crds: Iterable[str | os.PathLike[str]] | None = None,
        extra_crds: Iterable[str | os.PathLike[str]] = (),
        controller_manager: bool | None = None,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        port: int | None = None,
        etcd_port: int | None = None,
        etcd_peer_port: int | None = None,
        build: bool = True,
        progress: TextIO | None = None,
        start_timeout: float = 120.0,
        die_with_parent: bool = True,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self._crd_paths = [Path(p) for p in (default_crd_paths() if crds is None else crds)] + [
            Path(p) for p in extra_crds
        ]
        self._want_kcm = controller_manager
        self._controllers = tuple(controllers)
        self._fixed_ports = (port, etcd_port, etcd_peer_port)
        self._build = build
        self._progress = progress
        self._timeout = start_timeout
        self._die_with_parent = die_with_parent
        self._extra_args = tuple(extra_apiserver_args)

        self._lock = threading.Lock()
        self._processes: list[_Process] = []
        self._workdir: Path | None = None
        self._keep_logs = False
        self._started = False
        self._stopped = False
        self.binaries: Binaries | None = None
        self.port = 0
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.kcm_port = 0
        self.admin_token = ""
        self.operator_token = ""
        self.versions: dict[str, str] = {}
        self.crd_names: list[str] = []
        self.startup_seconds = 0.0
        self.controller_manager_running = False

    # -- public surface ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("KubeApiServer is not started")
        return self._workdir

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.workdir / "operator.kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    def admin_client(self) -> Any:
        """A new kubernetes.client.ApiClient acting as the admin (system:masters)."""
        return self._api_client(self.admin_token)

    def operator_client(self) -> Any:
        """A new kubernetes.client.ApiClient acting as the operator's ServiceAccount identity."""
        return self._api_client(self.operator_token)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start everything and wait until the API is ready and the CRDs are served."""
        if self._started:
            raise RuntimeError("KubeApiServer.start() was already called")
        self._started = True
        began = time.monotonic()
        self.binaries = ensure_binaries(build=self._build, progress=self._progress)
        auto_ports = all(p is None for p in self._fixed_ports)
        attempts = 3 if auto_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                break
            except KubeStartupError as error:
                self._keep_logs = True
                self.stop()
                if attempt == attempts or "address already in use" not in str(error):
                    raise
                # Another process took an auto-picked port between picking and binding: retry.
                if self._workdir is not None:
                    _remove(self._workdir)
                self._reset_for_retry()
            except BaseException:
                self._keep_logs = True
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop every process (kube-controller-manager, kube-apiserver, etcd); remove the data.

        Safe to call more than once and after a failed start.
        """
        with self._lock:
            if self._stopped or self._workdir is None:
                self._stopped = True
                return
            self._stopped = True
            processes, self._processes = self._processes, []
            if any(proc.exited() is not None for proc in processes):
                self._keep_logs = True  # one died on its own: keep the evidence
            # Controller manager, then API server, then etcd (the API server drains into it).
            for proc in reversed(processes):
                proc.stop()
            self.controller_manager_running = False
            with contextlib.suppress(ValueError):
                atexit.unregister(self.stop)
            workdir = self._workdir
            if self._keep_logs:
                for child in workdir.iterdir():
                    if child.name != "logs":
                        _remove(child)
            else:
                _remove(workdir)

    # -- YAML ----------------------------------------------------------------------------------

    def apply_yaml(
        self,
        *paths: str | os.PathLike[str],
        namespace: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Server-side apply every object in YAML files/folders, as the admin.

        Namespaces and CRDs go first (and CRDs are waited for until served), so a folder may
        hold a CRD and objects of its kind. Namespaced objects without a namespace go to
        ``namespace`` (default "default"). ``kinds`` limits which kinds are applied; kustomize
        Kustomization files are always skipped. Returns the applied objects as the server
        returned them.
        """
        documents = _load_documents(paths)
        if kinds is not None:
            wanted = set(kinds)
            documents = [d for d in documents if d.get("kind") in wanted]
        order = {"Namespace": 0, "CustomResourceDefinition": 1}
        documents.sort(key=lambda d: order.get(str(d.get("kind")), 2))
        applied: list[dict[str, Any]] = []
        from kubernetes import dynamic

        api = self.admin_client()
        try:
            client = dynamic.DynamicClient(api, cache_file=str(self.workdir / "discovery.json"))
            crds: list[str] = []
            for document in documents:
                if document.get("kind") != "CustomResourceDefinition" and crds:
                    self._wait_crds_served(api, crds)
                    client.resources.invalidate_cache()
                    crds = []
                resource = client.resources.get(
                    api_version=document["apiVersion"], kind=document["kind"]
                )
                target_ns = None
                if resource.namespaced:
                    target_ns = document.get("metadata", {}).get("namespace") or namespace
                    target_ns = target_ns or "default"
                result = client.server_side_apply(
                    resource,
                    body=document,
                    namespace=target_ns,
                    field_manager=FIELD_MANAGER,
                    force_conflicts=True,
                )
                applied.append(result.to_dict())
                if document.get("kind") == "CustomResourceDefinition":
                    crds.append(document["metadata"]["name"])
            if crds:
                self._wait_crds_served(api, crds)
        finally:
            api.close()
        return applied

    def install_crds(self, *paths: str | os.PathLike[str]) -> list[str]:
        """Install the CustomResourceDefinitions found in YAML files/folders; wait until served."""
        applied = self.apply_yaml(*paths, kinds=["CustomResourceDefinition"])
        names = [str(obj["metadata"]["name"]) for obj in applied]
        self.crd_names += [n for n in names if n not in self.crd_names]
        return names

    # -- internals -----------------------------------------------------------------------------

    def _reset_for_retry(self) -> None:
        self._workdir = None
        self._stopped = False
        self._keep_logs = False
        self.controller_manager_running = False

    def _api_client(self, token: str) -> Any:
        from kubernetes import client

        if not token:
            raise RuntimeError("KubeApiServer is not started")
        config = client.Configuration()
        config.host = self.url
        config.ssl_ca_cert = str(self.ca_file)
        # No prefix: works with the client's old "authorization" key and its new "BearerToken".
        config.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration=config)

    def _start_once(self) -> None:
        assert self.binaries is not None
        self._workdir = Path(tempfile.mkdtemp(prefix="keyrotor-kube-"))
        atexit.register(self.stop)  # in case the caller never stops us
        (self.workdir / "logs").mkdir()
        fixed_api, fixed_etcd, fixed_peer = self._fixed_ports
        auto = iter(_free_ports(4))
        self.port = fixed_api or next(auto)
        self.etcd_port = fixed_etcd or next(auto)
        self.etcd_peer_port = fixed_peer or next(auto)
        self.kcm_port = next(auto)

        _write_pki(self.workdir / "pki")
        self.admin_token = secrets.token_urlsafe(32)
        self.operator_token = secrets.token_urlsafe(32)
        tokens = self.workdir / "pki" / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"{",".join(ADMIN_GROUPS)}"\n'
            f"{self.operator_token},{OPERATOR_USER},keyrotor-operator,"
            f'"{",".join(OPERATOR_GROUPS)}"\n'
        )
        tokens.chmod(0o600)
        ca_pem = self.ca_file.read_bytes()
        for path, user, token in (
            (self.admin_kubeconfig, ADMIN_USER, self.admin_token),
            (self.operator_kubeconfig, "keyrotor-operator", self.operator_token),
        ):
            path.write_text(yaml.safe_dump(_kubeconfig(self.url, ca_pem, user, token)))
            path.chmod(0o600)

        etcd = self._start_etcd()
        self._wait(
            etcd,
            "did not become healthy",
            lambda: self._etcd_healthy(),
            f"{self.etcd_url}/health",
        )
        apiserver = self._start_apiserver()
        self._wait(apiserver, "did not become ready", self._apiserver_ready, f"{self.url}/readyz")
        self._wait(
            apiserver,
            "did not create the default namespace",
            lambda: self._get_json(f"{self.url}/api/v1/namespaces/default") is not None,
            "namespace default",
        )
        self.versions = {
            "kubernetes": str((self._get_json(f"{self.url}/version") or {}).get("gitVersion")),
            "etcd": str((self._get_json(f"{self.etcd_url}/version") or {}).get("etcdserver")),
        }
        if self._crd_paths:
            self.install_crds(*self._crd_paths)
        # After the CRDs: the garbage collector then watches their kinds from its first sync.
        self._start_controller_manager_if_wanted()

    def _spawn(self, name: str, binary: Path, args: Sequence[str]) -> _Process:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_file = log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        if self._die_with_parent:
            _load_libc()
        try:
            popen = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )
        except OSError as error:
            log_file.close()
            raise KubeStartupError(f"cannot run {name} ({binary}): {error}") from error
        proc = _Process(name, popen, log_path, log_file)
        self._processes.append(proc)
        return proc

    def _start_etcd(self) -> _Process:
        assert self.binaries is not None
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return self._spawn(
            "etcd",
            self.binaries.etcd,
            [
                "--name=keyrotor-envtest",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=keyrotor-envtest={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # test data: durability is not wanted, speed is
            ],
        )

    def _start_apiserver(self) -> _Process:
        assert self.binaries is not None
        pki = self.workdir / "pki"
        return self._spawn(
            "kube-apiserver",
            self.binaries.kube_apiserver,
            [
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--allow-privileged=true",
                # As envtest: no controller creates the default ServiceAccount of namespaces.
                "--disable-admission-plugins=ServiceAccount",
                "--profiling=false",
                *self._extra_args,
            ],
        )

    def _start_controller_manager_if_wanted(self) -> None:
        assert self.binaries is not None
        binary = self.binaries.kube_controller_manager
        if self._want_kcm is False:
            return
        if binary is None:
            if self._want_kcm:
                raise KubeStartupError(
                    f"kube-controller-manager not found in {self.binaries.directory} "
                    f"({self.binaries.source}) and controller_manager=True"
                )
            return
        pki = self.workdir / "pki"
        kubeconfig = str(self.admin_kubeconfig)
        kcm = self._spawn(
            "kube-controller-manager",
            binary,
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--cert-dir={pki}",
                "--leader-elect=false",
                f"--controllers={','.join(self._controllers)}",
                "--use-service-account-credentials=false",
                "--profiling=false",
            ],
        )
        self._wait(
            kcm,
            "did not become healthy",
            lambda: (
                self._get_json(f"https://127.0.0.1:{self.kcm_port}/healthz", raw=True) is not None
            ),
            f"https://127.0.0.1:{self.kcm_port}/healthz",
        )
        self.controller_manager_running = True

    def _wait(self, proc: _Process, what: str, check: Callable[[], bool], target: str) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            code = proc.exited()
            if code is not None:
                raise proc.failure(f"exited with code {code} during start-up")
            if check():
                return
            if time.monotonic() > deadline:
                raise proc.failure(f"{what} within {self._timeout:.0f}s at {target}; its log says")
            time.sleep(_POLL)

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _get_json(self, url: str, *, raw: bool = False) -> Any:
        """GET url (admin token over TLS for https); None on any error."""
        request = urllib.request.Request(url)  # noqa: S310 - our own loopback servers
        context = None
        if url.startswith("https://"):
            request.add_header("Authorization", f"Bearer {self.admin_token}")
            context = self._ssl_context()
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
                body = response.read()
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return None
        if raw:
            return body
        try:
            return json.loads(body)
        except ValueError:
            return None

    def _etcd_healthy(self) -> bool:
        health = self._get_json(f"{self.etcd_url}/health")
        return isinstance(health, dict) and health.get("health") == "true"

    def _apiserver_ready(self) -> bool:
        return self._get_json(f"{self.url}/readyz", raw=True) is not None

    def _wait_crds_served(self, api: Any, names: Sequence[str]) -> None:
        from kubernetes import client

        ext = client.ApiextensionsV1Api(api)
        for name in names:

            def served(name: str = name) -> bool:
                crd = ext.read_custom_resource_definition(name)
                conditions = {c.type: c.status for c in (crd.status.conditions or [])}
                if conditions.get("Established") != "True":
                    return False
                plural, group = crd.spec.names.plural, crd.spec.group
                for version in crd.spec.versions:
                    if version.served and (
                        self._get_json(f"{self.url}/apis/{group}/{version.name}/{plural}?limit=1")
                        is None
                    ):
                        return False
                return True

            _poll_until(served, self._timeout, f"CustomResourceDefinition {name} to be served")


def _poll_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise KubeStartupError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(_POLL)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _load_documents(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such YAML file or folder: {path}")
    documents: list[dict[str, Any]] = []
    for file in files:
        for document in yaml.safe_load_all(file.read_text()):
            if not isinstance(document, dict) or not document.get("kind"):
                continue
            if document["kind"] == "Kustomization":
                continue
            if document["kind"].endswith("List") and "items" in document:
                documents += [d for d in document["items"] if isinstance(d, dict)]
            else:
                documents.append(document)
    return documents


# --------------------------------------------------------------------------------------------
# python -m keyrotor_sandbox.kube build|run
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m keyrotor_sandbox.kube")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or find the binaries; print their folder")
    run = sub.add_parser("run", help="start the API server; print kubeconfigs; wait for Ctrl-C")
    run.add_argument("--crds", action="append", help="CRD file or folder (repeatable)")
    run.add_argument("--no-controller-manager", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_binaries().directory)
            return 0
        kube = KubeApiServer(
            crds=args.crds, controller_manager=False if args.no_controller_manager else None
        )
        with kube:
            print(f"url: {kube.url}")
            print(f"versions: {kube.versions}")
            print(f"admin kubeconfig: {kube.admin_kubeconfig}")
            print(f"operator kubeconfig: {kube.operator_kubeconfig}")
            print(f"started in {kube.startup_seconds:.1f}s; Ctrl-C stops", flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    except KubeStartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
