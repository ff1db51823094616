"""Event mode by push (``--event-delivery push``): EventBridge calls the operator, so nothing is
polled at rest.

The installation's rule (keyrotor.aws.eventing) targets an API destination whose endpoint is the
user's Ingress in front of :class:`PushListener`; its connection sends the shared token in the
``X-Keyrotor-Token`` header (keyrotor.aws.api_destination). The listener treats every request as
hostile until the token matched:

- anything but ``POST``: 405; a missing or wrong token: 401, before the body is read (compared in
  constant time, as digests); nothing else happens and nothing of the request is logged;
- no ``Content-Length``: 411; more than :data:`MAX_BODY` bytes: 413; a body not sent within
  :data:`READ_TIMEOUT`: the connection is dropped; at most :data:`MAX_CONNECTIONS` at once;
- the event is parsed like a queue message (keyrotor.secret_events); only a secret under this
  installation's prefix, owned by an object in this process's index, is looked at: the object's
  key goes into :class:`PushInbox` (one entry per object, however many events name it; bounded),
  and the answer (202) goes back at once. Anything else is answered 200 and forgotten;
- the look is the SQS consumer's (:meth:`keyrotor.sync.SyncLoop.check`): one ``DescribeSecret``,
  and the value is read only when ``AWSCURRENT`` really moved; an object is looked at most once
  per :data:`MIN_GAP` seconds. So the worst a request can cause is bounded reads.

Before this replica is the active one (leader election) the listener answers an authorized
request 503 (EventBridge retries 5xx and 429), so a standby behind the same Service loses
nothing; with ``--event-push-service`` a standby is not behind it at all (the active replica
points the Service's EndpointSlice at itself: keyrotor.k8s.endpoint_slices). A delivery that
fails for good, or a look that fails three times, is left to the ListSecrets sweep, which stays
the safety net.

The connection, the API destination and the rule's target are ensured at start and then as
often as the safety-net sweep runs (as the queue is), not per event.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from keyrotor import metrics, secret_events
from keyrotor.aws import api_destination, eventing
from keyrotor.aws.policy_params import event_push_name
from keyrotor.errors import failure_for
from keyrotor.index import Key
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings
from keyrotor.sync import SyncLoop

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024  # EventBridge's largest event
READ_TIMEOUT = 5.0  # seconds for a request's headers and body (EventBridge waits 5 s for us)
MAX_CONNECTIONS = 32  # requests handled at once; more are dropped at accept
MAX_PENDING = 10_000  # objects waiting for a look; beyond: 429 (EventBridge retries)
MIN_GAP = 1.0  # seconds between two event looks at one object
LOOK_RETRIES = (1.0, 5.0, 15.0)  # a failed look is tried again after these; then the sweep
WORKERS = 2  # looks at once
RETRY_AFTER = (1.0, 5.0, 15.0, 60.0)  # ensuring the AWS side again after consecutive failures


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("latin-1", "replace")).digest()


def token_ok(given: list[str], expected_digest: bytes) -> bool:
    """Exactly one token header, equal to the token; compared as digests in constant time (no
    early exit, no length leak)."""
    value = given[0] if len(given) == 1 else ""
    return hmac.compare_digest(token_digest(value), expected_digest) and len(given) == 1


def own_secret(secret_id: str, settings: Settings) -> bool:
    """A name or ARN under this installation's prefix (``keyrotor/<cluster>/``)."""
    prefix = settings.secret_prefix
    _, sep, name = secret_id.partition(":secret:")
    return (name if sep and secret_id.startswith("arn:") else secret_id).startswith(prefix)


class PushInbox:
    """Objects to look at, each at most once (events that name it again collapse into its entry),
    each no sooner than :data:`MIN_GAP` after its last look; bounded. Thread-safe."""

    def __init__(self, limit: int = MAX_PENDING, gap: float = MIN_GAP) -> None:
        self.limit = limit
        self.gap = gap
        self._due: dict[Key, float] = {}
        self._attempts: dict[Key, int] = {}
        self._last_look: dict[Key, float] = {}
        self._heap: list[tuple[float, Key]] = []
        self._cond = threading.Condition()

    def add(self, keys: Iterable[Key], delay: float = 0.0, attempt: int = 0) -> bool:
        """Queue each object; False (nothing queued) when that would pass the limit."""
        now, keys = time.monotonic(), list(keys)
        with self._cond:
            new = [k for k in keys if k not in self._due]
            if len(self._due) + len(new) > self.limit:
                return False
            for key in keys:
                due = max(now + delay, self._last_look.get(key, -self.gap) + self.gap)
                if key in self._due and self._due[key] <= due:
                    continue  # already waiting, as soon or sooner
                self._due[key] = due
                self._attempts[key] = attempt
                heapq.heappush(self._heap, (due, key))
            self._cond.notify()
            return True

    def take(self, timeout: float) -> tuple[Key, int] | None:
        """The next object whose time came, and its attempt number; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier time
                if self._heap and self._heap[0][0] <= now:
                    _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._last_look[key] = now
                    return key, self._attempts.pop(key, 0)
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                if deadline - now <= 0:
                    return None
                self._cond.wait(max(wait, 0.01))

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)


Receiver = Callable[[bytes], tuple[int, str]]  # body -> (status, outcome)


class PushListener:
    """The HTTP listener on ``bind_address:event_push_port``. Started with the process (so a
    standby answers 503, not connection refused); :meth:`attach` hands it the active operator's
    receiver."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._digest = token_digest(settings.event_push_token)
        self._receiver: Receiver | None = None
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.server = _server(self, settings)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="keyrotor-push-listener", daemon=True
        )

    def start(self) -> PushListener:
        self._thread.start()
        return self

    def attach(self, receiver: Receiver | None) -> None:
        self._receiver = receiver

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> tuple[int, str]:
        """Status and outcome of one POST: the token first, then the size, then the body."""
        if not token_ok(request.headers.get_all(api_destination.TOKEN_HEADER) or [], self._digest):
            return 401, "unauthorized"
        if request.headers.get("Transfer-Encoding"):
            return 411, "bad_request"  # chunked bodies are not read: a length is required
        length_text = request.headers.get("Content-Length")
        if length_text is None:
            return 411, "bad_request"
        try:
            length = int(length_text)
        except ValueError:
            return 400, "bad_request"
        if length < 0:
            return 400, "bad_request"
        if length > MAX_BODY:
            return 413, "too_large"
        receiver = self._receiver
        if receiver is None:
            return 503, "standby"
        try:
            body = request.rfile.read(length)
        except OSError:
            return 400, "bad_request"
        if len(body) != length:
            return 400, "bad_request"
        return receiver(body)


def _server(listener: PushListener, settings: Settings) -> ThreadingHTTPServer:
    """The listener's HTTP server: requests go to ``listener.handle``; at most
    :data:`MAX_CONNECTIONS` at once; nothing of a request is logged."""

    class Handler(BaseHTTPRequestHandler):
        timeout = READ_TIMEOUT  # the socket's: slow headers or body end the connection
        server_version = "keyrotor"
        sys_version = ""

        def do_POST(self) -> None:
            status, outcome = listener.handle(self)
            metrics.EVENT_PUSH_REQUESTS.labels(outcome=outcome).inc()
            self._answer(status)

        def _refuse(self) -> None:
            metrics.EVENT_PUSH_REQUESTS.labels(outcome="method").inc()
            self._answer(405)

        do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

        def _answer(self, status: int) -> None:
            if status >= 400:
                self.close_connection = True  # an unread body must not become a request
            self.send_response(status)
            if status in (429, 503):
                self.send_header("Retry-After", "5")
            if status == 405:
                self.send_header("Allow", "POST")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass  # nothing of a request reaches the log (its headers may hold a token)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in settings.bind_address else socket.AF_INET
        daemon_threads = True

        def process_request(self, request: Any, client_address: Any) -> None:
            if not listener.slots.acquire(blocking=False):
                metrics.EVENT_PUSH_REQUESTS.labels(outcome="dropped").inc()
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def handle_error(self, request: Any, client_address: Any) -> None:
            # One line, nothing of the request (socketserver would print a traceback).
            log.warning("event push listener: a request failed")

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                listener.slots.release()

    return Server((settings.bind_address, settings.event_push_port), Handler)


class PushDelivery:
    """The active operator's side of push delivery: the AWS resources, the inbox, the looks."""

    def __init__(self, rt: Runtime, sync: SyncLoop, listener: PushListener) -> None:
        if rt.aws.events is None:
            raise ValueError("push delivery needs the events client")
        self.rt = rt
        self.sync = sync
        self.listener = listener
        self.events = rt.aws.events
        settings = rt.settings
        self.target = eventing.EventTarget(
            cluster_name=settings.cluster_name,
            region=rt.aws.region,
            account_id=rt.installation.target.account_id,
            partition=rt.installation.target.partition,
            shard=settings.shard_name,
        )
        self.push = api_destination.PushDestination(
            cluster_name=settings.cluster_name,
            name=event_push_name(settings.cluster_name, settings.shard_name),
            url=settings.event_push_url or "",
            role_arn=settings.event_push_role_arn or "",
        )
        self.inbox = PushInbox()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.keep_ensured, name="keyrotor-push-ensure", daemon=True),
            *(
                threading.Thread(target=self.work, name=f"keyrotor-push-{i}", daemon=True)
                for i in range(WORKERS)
            ),
        ]

    def start(self) -> PushDelivery:
        for thread in self._threads:
            thread.start()
        self.listener.attach(self.receive)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self.listener.attach(None)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    # the AWS side

    def ensure(self) -> bool:
        """Connection, API destination, rule and its target; True when something was written."""
        token = self.rt.settings.event_push_token
        connection = api_destination.ensure_connection(self.events, self.push, token)
        destination = api_destination.ensure_destination(self.events, self.push, connection)
        target = api_destination.rule_target(self.push, destination)
        return eventing.ensure_rule_target(self.events, self.target, target)

    def keep_ensured(self) -> None:
        from keyrotor.event_consumer import recheck_interval

        failures = 0
        while not self._stop.is_set():
            try:
                if self.ensure():
                    log.info(
                        "event mode: rule %s pushes to %s", self.target.rule_name, self.push.url
                    )
                failures = 0
                wait = recheck_interval(self.rt.settings)
            except Exception as exc:  # tried again; the sweep covers the meantime
                wait = RETRY_AFTER[min(failures, len(RETRY_AFTER) - 1)]
                failures += 1
                log.warning("event mode: %s (again in %gs)", failure_for(exc).message, wait)
            self._stop.wait(wait)

    # requests

    def receive(self, body: bytes) -> tuple[int, str]:
        """An authorized request's body: which of this process's objects to look at (no I/O)."""
        try:
            json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
            return 400, "bad_request"
        event = secret_events.parse(body.decode("utf-8", "replace"))
        if event is None or not own_secret(event.secret_id, self.rt.settings):
            metrics.SECRET_EVENTS.labels(outcome="ignored").inc()
            return 200, "ignored"
        keys = [
            e.key
            for e in self.rt.index.active()
            if e.state.secret_arn
            and secret_events.names_secret(event.secret_id, e.state.secret_arn)
        ]
        if not keys:
            metrics.SECRET_EVENTS.labels(outcome="ignored").inc()
            return 200, "ignored"
        if not self.inbox.add(keys):
            return 429, "busy"
        return 202, "accepted"

    def work(self) -> None:
        while not self._stop.is_set():
            taken = self.inbox.take(timeout=1.0)
            if taken is None:
                continue
            key, attempt = taken
            entry = self.rt.index.get(*key)
            if entry is None:
                continue  # gone meanwhile
            try:
                self.sync.check(entry)
            except Exception as exc:
                metrics.SECRET_EVENTS.labels(outcome="failed").inc()
                log.warning("event mode: %s/%s: %s", *key, failure_for(exc).message)
                if attempt < len(LOOK_RETRIES):
                    self.inbox.add([key], delay=LOOK_RETRIES[attempt], attempt=attempt + 1)
                continue
            metrics.SECRET_EVENTS.labels(outcome="checked").inc()
