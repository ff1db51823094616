"""A real Kubernetes API server on loopback: etcd + kube-apiserver (+ kube-controller-manager).

The Python counterpart of controller-runtime's envtest, used by the test suite and by
``keyrotor demo``. No kubelet, no containers: only the API machinery, so CRD schema and CEL
validation, the status subresource, finalizers, resourceVersion conflicts, server-side apply,
watches and RBAC are the real ones.

What the binaries do themselves is left to them: kube-apiserver generates its own self-signed
serving certificate (and CA) in ``--cert-dir``, whose key also signs and verifies ServiceAccount
tokens; kube-controller-manager does the same in its own folder; identities come from a static
token file (``--token-auth-file``). This module only picks ports, writes the token file and the
kubeconfigs, starts the processes, waits until they answer, and says in one line why one did not.

Binaries, in this order:

1. ``KUBEBUILDER_ASSETS`` names a folder holding ``kube-apiserver`` and ``etcd`` (as
   ``setup-envtest`` makes); ``kube-controller-manager`` there is used if present.
2. The cache folder for the pin in ``tests/envtest/go.mod``:
   ``$KEYROTOR_ENVTEST_CACHE`` (default ``~/.cache/keyrotor/envtest``) ``/k8s-<v>-etcd-<v>/``.
3. Otherwise they are built into that folder with ``tests/envtest/build.sh`` (needs Go and the
   Go module proxy; a few minutes cold). The recipe is found in the keyrotor checkout this
   package runs from (or the current directory's).

Usage::

    with KubeApiServer(extra_crds=["tests/fixtures/test_crd.yaml"]) as kube:
        api = kube.admin_client()          # kubernetes.client.ApiClient, system:masters
        kube.operator_kubeconfig           # identity system:serviceaccount:keyrotor-system:keyrotor

Everything listens on 127.0.0.1 on free ports. ``stop()`` (and leaving the ``with`` block) always
stops every process and removes the data folder; the process logs are kept (and their folder
named) only when start-up failed or a process died on its own.

From a shell: ``python -m keyrotor_sandbox.kube`` starts one, prints its kubeconfigs and waits
for Ctrl-C (``make -C tests/envtest`` builds the binaries).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
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
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TextIO

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

# Used only to find an already built cache folder when the recipe (go.mod) is not at hand.
# tests/envtest/go.mod is the source of truth (a test checks they agree).
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
FIELD_MANAGER = "keyrotor-sandbox"

_POLL = 0.1


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


# --- binaries: KUBEBUILDER_ASSETS, the cache folder, or a build with the pinned recipe ----------


@dataclass(frozen=True)
class Binaries:
    directory: Path
    kube_apiserver: Path
    etcd: Path
    kube_controller_manager: Path | None
    source: str  # "KUBEBUILDER_ASSETS", "cache" or "built"


def find_recipe() -> Path | None:
    """tests/envtest (build.sh, go.mod) of the checkout this runs from, or the current one's."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve() / "_"):
        for parent in start.parents:
            candidate = parent / "tests" / "envtest"
            if (candidate / "build.sh").is_file() and (candidate / "go.mod").is_file():
                return candidate
    return None


def repo_root() -> Path | None:
    """The keyrotor checkout (the folder holding crds/, deploy/, tests/), if any."""
    recipe = find_recipe()
    return recipe.parent.parent if recipe is not None else None


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


def cache_dir(k8s_version: str, etcd_version: str) -> Path:
    """Where tests/envtest/build.sh puts these versions (the same rule as the script's)."""
    root = os.environ.get(ENV_CACHE)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg or Path.home() / ".cache") / "keyrotor" / "envtest")
    return Path(root).expanduser() / f"k8s-{k8s_version}-etcd-{etcd_version}"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


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
            directory,
            directory / "kube-apiserver",
            directory / "etcd",
            kcm if _executable(kcm) else None,
            ENV_ASSETS,
        )

    recipe = find_recipe()
    directory = cache_dir(*pinned_versions(recipe))
    names = ("kube-apiserver", "kube-controller-manager", "etcd")
    source = "cache"
    if not all(_executable(directory / name) for name in names):
        if not build or recipe is None or shutil.which("go") is None:
            why = (
                "building is off"
                if not build
                else "no build recipe (tests/envtest) in this checkout"
                if recipe is None
                else "`go` is not on PATH to build them"
            )
            raise KubeStartupError(
                f"no kube-apiserver/etcd binaries in {directory} and {why}; run "
                f"`make -C tests/envtest` in a keyrotor checkout, or set {ENV_ASSETS} to a "
                f"folder holding kube-apiserver and etcd"
            )
        # build.sh takes a lock and re-checks, so concurrent callers build once.
        _run_build(recipe, directory, progress if progress is not None else sys.stderr)
        source = "built"
    return Binaries(
        directory,
        directory / "kube-apiserver",
        directory / "etcd",
        directory / "kube-controller-manager",
        source,
    )


def _run_build(recipe: Path, out: Path, progress: TextIO) -> None:
    """Run tests/envtest/build.sh, passing its lines on except Go's per-module download lines."""
    started = time.monotonic()
    progress.write(f"[keyrotor envtest] building into {out} (several minutes, once)\n")
    tail: list[str] = []
    downloads = 0
    with subprocess.Popen(
        ["bash", str(recipe / "build.sh"), str(out)],
        cwd=recipe,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = [*tail[-39:], line]
            if line.startswith("go: downloading"):
                downloads += 1
            elif line:
                progress.write(f"[keyrotor envtest] {line}\n")
                progress.flush()
    if proc.returncode != 0:
        cause = next((x for x in reversed(tail) if x), f"exit status {proc.returncode}")
        raise KubeStartupError(
            f"building the envtest binaries with {recipe / 'build.sh'} failed "
            f"(exit {proc.returncode}): {cause}",
            log_tail=tail,
        )
    progress.write(
        f"[keyrotor envtest] built in {time.monotonic() - started:.0f}s "
        f"({downloads} modules downloaded)\n"
    )


# --- processes and their logs -------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


_KLOG_LINE = re.compile(r"^([EF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]+\] (.*)$")


def _log_cause(lines: Sequence[str]) -> str:
    """The most telling error line of a Go server's log (cobra, etcd's JSON or klog format)."""
    ranked: dict[int, str] = {}
    for line in lines:
        text = line.strip()
        if text.startswith("Error: "):  # cobra: the command's own error, the best summary
            ranked[0] = text[len("Error: ") :]
        elif text.startswith("{"):  # etcd (zap JSON)
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(text)
                message = f"{entry.get('msg', '')}: {entry['error']}" if entry.get("error") else ""
                if message and entry.get("level") in ("fatal", "panic"):
                    ranked[1] = message
                elif message and entry.get("level") == "error":
                    ranked[3] = message
        elif match := _KLOG_LINE.match(text):
            ranked[2 if match.group(1) == "F" else 4] = match.group(2)
    best = ranked[min(ranked)] if ranked else (lines[-1] if lines else "no output")
    return best[:400]


def _log_tail(path: Path, lines: int = 200) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


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
        return KubeStartupError(
            f"{self.name} {what}: {_log_cause(tail)}", log_path=self.log_path, log_tail=tail[-15:]
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


# --- the launcher -------------------------------------------------------------------------------


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
        if crds is None:
            root = repo_root()
            crds = [root / "crds"] if root is not None and (root / "crds").is_dir() else []
        self._crd_paths = [Path(p) for p in [*crds, *extra_crds]]
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
        self.port = self.etcd_port = self.etcd_peer_port = self.kcm_port = 0
        self.admin_token = self.operator_token = ""
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
        """kube-apiserver's own serving certificate followed by its CA, as it generated them."""
        return self.workdir / "pki" / "apiserver.crt"

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
        return self.start()

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
        # Another process may take an auto-picked port between picking and binding: retry.
        attempts = 3 if self._fixed_ports == (None, None, None) else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                break
            except BaseException as error:
                self._keep_logs = True
                self.stop()
                retry = isinstance(error, KubeStartupError) and "address already in use" in str(
                    error
                )
                if attempt == attempts or not retry:
                    raise
                shutil.rmtree(self.workdir, ignore_errors=True)
                self._workdir, self._stopped, self._keep_logs = None, False, False
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
            if not self._keep_logs:
                shutil.rmtree(self._workdir, ignore_errors=True)
                return
            for child in self._workdir.iterdir():
                if child.name != "logs":
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)

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
        from kubernetes import dynamic

        documents = _load_documents(paths)
        if kinds is not None:
            documents = [d for d in documents if d.get("kind") in set(kinds)]
        order = {"Namespace": 0, "CustomResourceDefinition": 1}
        documents.sort(key=lambda d: order.get(str(d.get("kind")), 2))
        applied: list[dict[str, Any]] = []
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
                    metadata = document.get("metadata", {})
                    target_ns = metadata.get("namespace") or namespace or "default"
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
        self._workdir = Path(tempfile.mkdtemp(prefix="keyrotor-kube-"))
        atexit.register(self.stop)  # in case the caller never stops us
        (self.workdir / "logs").mkdir()
        (self.workdir / "pki").mkdir(mode=0o700)
        auto = iter(_free_ports(4))
        self.port, self.etcd_port, self.etcd_peer_port = (
            p or next(auto) for p in self._fixed_ports
        )
        self.kcm_port = next(auto)
        self.admin_token = secrets.token_urlsafe(32)
        self.operator_token = secrets.token_urlsafe(32)
        tokens = self.workdir / "pki" / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"{",".join(ADMIN_GROUPS)}"\n'
            f'{self.operator_token},{OPERATOR_USER},keyrotor-operator,"{",".join(OPERATOR_GROUPS)}"\n'
        )
        tokens.chmod(0o600)

        etcd = self._start_etcd()
        self._wait(etcd, "did not become healthy", self._etcd_healthy, f"{self.etcd_url}/health")
        apiserver = self._start_apiserver()
        self._wait(
            apiserver,
            "did not become ready",
            lambda: self._get(f"{self.url}/readyz", self.ca_file) is not None,
            f"{self.url}/readyz",
        )
        self._wait(
            apiserver,
            "did not create the default namespace",
            lambda: self._get(f"{self.url}/api/v1/namespaces/default", self.ca_file) is not None,
            "namespace default",
        )
        # The CA exists now: kube-apiserver wrote it on start-up.
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        for path, user, token in (
            (self.admin_kubeconfig, ADMIN_USER, self.admin_token),
            (self.operator_kubeconfig, "keyrotor-operator", self.operator_token),
        ):
            path.write_text(yaml.safe_dump(_kubeconfig(self.url, ca_data, user, token)))
            path.chmod(0o600)
        version = json.loads(self._get(f"{self.url}/version", self.ca_file) or b"{}")
        etcd_version = json.loads(self._get(f"{self.etcd_url}/version") or b"{}")
        self.versions = {
            "kubernetes": str(version.get("gitVersion")),
            "etcd": str(etcd_version.get("etcdserver")),
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
        # No --tls-cert-file: kube-apiserver generates a CA and a serving certificate for
        # 127.0.0.1 and its service IP into --cert-dir (apiserver.crt = certificate + CA).
        # Its key is written before the service-account key is read, so it signs the tokens too.
        key = pki / "apiserver.key"
        return self._spawn(
            "kube-apiserver",
            self.binaries.kube_apiserver,
            [
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
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
        kubeconfig = str(self.admin_kubeconfig)
        cert_dir = self.workdir / "kcm"  # it generates its own serving certificate there
        kcm = self._spawn(
            "kube-controller-manager",
            binary,
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                f"--cert-dir={cert_dir}",
                "--leader-elect=false",
                f"--controllers={','.join(self._controllers)}",
                "--use-service-account-credentials=false",
                "--profiling=false",
            ],
        )
        healthz = f"https://127.0.0.1:{self.kcm_port}/healthz"
        cert = cert_dir / "kube-controller-manager.crt"
        self._wait(
            kcm, "did not become healthy", lambda: self._get(healthz, cert) is not None, healthz
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

    def _get(self, url: str, ca_file: Path | None = None) -> bytes | None:
        """GET url (https: with the admin token, trusting ca_file); None on any error."""
        request = urllib.request.Request(url)  # noqa: S310 - our own loopback servers
        context = None
        if url.startswith("https://"):
            if ca_file is None or not ca_file.is_file():
                return None  # not written yet
            request.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            if ca_file is not None:
                # Inside the try: kube-apiserver may be writing the file this moment (empty or
                # partial: ssl.SSLError NO_CERTIFICATE_OR_CRL_FOUND), which is "not yet" too.
                context = ssl.create_default_context(cafile=str(ca_file))
            with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
                return bytes(response.read())
        except (OSError, ssl.SSLError):
            return None

    def _etcd_healthy(self) -> bool:
        with contextlib.suppress(ValueError, TypeError):
            return bool(json.loads(self._get(f"{self.etcd_url}/health") or b"")["health"] == "true")
        return False

    def _wait_crds_served(self, api: Any, names: Sequence[str]) -> None:
        from kubernetes import client

        ext = client.ApiextensionsV1Api(api)

        def served(name: str) -> bool:
            crd = ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            plural, group = crd.spec.names.plural, crd.spec.group
            return conditions.get("Established") == "True" and all(
                self._get(f"{self.url}/apis/{group}/{v.name}/{plural}?limit=1", self.ca_file)
                for v in crd.spec.versions
                if v.served
            )

        for name in names:
            deadline = time.monotonic() + self._timeout
            while not served(name):
                if time.monotonic() > deadline:
                    raise KubeStartupError(
                        f"timed out after {self._timeout:.0f}s waiting for "
                        f"CustomResourceDefinition {name} to be served"
                    )
                time.sleep(_POLL)


def _kubeconfig(url: str, ca_data: str, user: str, token: str) -> dict[str, Any]:
    cluster, context = "keyrotor-envtest", f"keyrotor-envtest-{user}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": url, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
    }


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
            if not isinstance(document, dict) or document.get("kind") in (None, "Kustomization"):
                continue
            if document["kind"].endswith("List") and "items" in document:
                documents += [d for d in document["items"] if isinstance(d, dict)]
            else:
                documents.append(document)
    return documents


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m keyrotor_sandbox.kube``: start one, print its kubeconfigs, wait for Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m keyrotor_sandbox.kube")
    parser.add_argument("--crds", action="append", help="CRD file or folder (repeatable)")
    parser.add_argument("--no-controller-manager", action="store_true")
    args = parser.parse_args(argv)
    kube = KubeApiServer(
        crds=args.crds, controller_manager=False if args.no_controller_manager else None
    )
    try:
        with kube:
            print(f"url: {kube.url}  versions: {kube.versions}")
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
