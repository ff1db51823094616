"""Event mode: a thread beside the sync loop that long-polls the installation's queue and has the
sync loop look at exactly the secrets the events name.

- At start (then every :func:`recheck_interval`, and after a failure) it ensures the
  EventBridge rule and, unless the user named a queue, the queue with its policy
  (:mod:`keyrotor.aws.eventing`). A rule or queue broken out of band loses events until then,
  and what a lost event would have said the safety-net sweep finds within ``sync_interval``:
  checking them more often than the sweep runs would only add calls (issue 10: event mode's
  steady-state cost).
- Each message: :func:`keyrotor.secret_events.parse` says which secret, if any; the object that
  owns it gets one ``DescribeSecret`` and a decision only when ``AWSCURRENT`` moved
  (:meth:`keyrotor.sync.SyncLoop.check`, the focus tick's own path); then the message is
  deleted. A message whose look failed is left: it comes back after the visibility timeout.
- Lost, repeated and late events change nothing: the look reads the truth, and the ListSecrets
  sweep (every ``sync_interval``) finds what no event announced.

Stopping sets an event; a long poll under way (at most 20 s) is not waited for: its messages are
not handled and come back after the visibility timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from keyrotor import metrics, secret_events
from keyrotor.aws import eventing
from keyrotor.aws.clients import error_code
from keyrotor.errors import failure_for
from keyrotor.runtime import Runtime
from keyrotor.settings import Settings
from keyrotor.sync import SyncLoop

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)

RETRY_AFTER = (1.0, 5.0, 15.0, 60.0)  # seconds after consecutive failures (ensure or receive)
QUEUE_GONE = eventing.QUEUE_GONE


def recheck_interval(settings: Settings) -> float:
    """Seconds between checks of the rule and the queue: as often as the safety-net sweep, and
    never more often than the installation's own check (``installation_recheck``)."""
    return max(settings.installation_recheck, settings.sync_interval)


class EventConsumer:
    def __init__(self, rt: Runtime, sync: SyncLoop) -> None:
        if rt.aws.sqs is None or rt.aws.events is None:
            raise ValueError("event mode needs the sqs and events clients")
        self.rt = rt
        self.sync = sync
        self.sqs: SQSClient = rt.aws.sqs
        self.events: EventBridgeClient = rt.aws.events
        target = rt.installation.target
        self.target = eventing.EventTarget(
            cluster_name=rt.settings.cluster_name,
            region=rt.aws.region,
            account_id=target.account_id,
            partition=target.partition,
            shard=rt.settings.shard_name,
        )
        self.queue_url: str | None = None
        self._given_queue_arn: str | None = None  # a named queue's ARN never changes: read once
        self._ensured_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="keyrotor-events", daemon=True)

    def start(self) -> EventConsumer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def ensure(self) -> str:
        """The rule and its target queue; the queue's URL."""
        given = self.rt.settings.event_queue_url
        if given:
            if self._given_queue_arn is None:
                self._given_queue_arn = eventing.queue_arn(self.sqs, given)
            url, arn = given, self._given_queue_arn
        else:
            url = eventing.ensure_queue(self.sqs, self.target, known_url=self.queue_url)
            arn = self.target.queue_arn
        if eventing.ensure_rule(self.events, self.target, arn):
            log.info("event mode: rule %s sends to %s", self.target.rule_name, arn)
        return url

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.poll_once()
                failures = 0
            except Exception as exc:  # one failed poll must not end the consumer
                if error_code(exc) in QUEUE_GONE:
                    self.queue_url = None  # deleted out of band: ensured again
                    self._given_queue_arn = None
                wait = RETRY_AFTER[min(failures, len(RETRY_AFTER) - 1)]
                failures += 1
                log.warning("event mode: %s (again in %gs)", failure_for(exc).message, wait)
                self._stop.wait(wait)

    def poll_once(self) -> None:
        recheck = recheck_interval(self.rt.settings)
        if self.queue_url is None or time.monotonic() - self._ensured_at >= recheck:
            self.queue_url = self.ensure()
            self._ensured_at = time.monotonic()
        url = self.queue_url
        for message in eventing.receive(self.sqs, url):
            if self._stop.is_set():
                return  # not handled, not deleted: it comes back
            if self.handle(message.body):
                eventing.delete(self.sqs, url, message)

    def handle(self, body: str) -> bool:
        """Look at the object an event names. True: done with the message (delete it)."""
        event = secret_events.parse(body)
        if event is None:
            metrics.SECRET_EVENTS.labels(outcome="ignored").inc()
            return True
        entries = [
            e
            for e in self.rt.index.active()
            if e.state.secret_arn
            and secret_events.names_secret(event.secret_id, e.state.secret_arn)
        ]
        if not entries:
            metrics.SECRET_EVENTS.labels(outcome="ignored").inc()
            return True
        try:
            for entry in entries:
                self.sync.check(entry)
        except Exception as exc:
            metrics.SECRET_EVENTS.labels(outcome="failed").inc()
            log.warning(
                "event mode: %s %s: %s", event.event_name, event.secret_id, failure_for(exc).message
            )
            return False
        metrics.SECRET_EVENTS.labels(outcome="checked").inc()
        return True
