"""keyrotor's own decision threads for kopf's handlers (keyrotor.decisions), without a network:
each object queued once, decided once more when asked during its decision, never two at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from keyrotor.decisions import DecisionQueue
from keyrotor.status import kopf_bookkeeping_only

WAIT = 30.0


class Recorder:
    """A decide() that records its calls and, for the names in ``hold``, waits to be let go."""

    def __init__(self, hold: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.hold = set(hold)
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.most = 0

    def __call__(self, namespace: str, name: str, uid: str, trigger: str) -> None:
        with self.lock:
            self.calls.append((name, uid, trigger))
            self.running[name] = self.running.get(name, 0) + 1
            self.most = max(self.most, sum(self.running.values()))
            assert self.running[name] == 1, f"{name} decided twice at once"
        self.started.release()
        if name in self.hold:
            assert self.release.wait(WAIT)
        with self.lock:
            self.running[name] -= 1


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    yield Recorder(hold=frozenset({"held"}))


def _drain(queue: DecisionQueue) -> None:
    for _ in range(int(WAIT / 0.01)):
        if queue.pending() == 0:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{queue.pending()} decisions still pending")


def test_a_request_during_a_decision_runs_it_once_more_afterwards(recorder: Recorder) -> None:
    queue = DecisionQueue(recorder, workers=2)
    queue.submit("ns", "held", "uid-1", "resume")
    assert recorder.started.acquire(timeout=WAIT)  # under decision now
    queue.submit("ns", "held", "uid-1", "update")
    queue.submit("ns", "held", "uid-1", "update2")  # one more decision, with the latest trigger
    recorder.release.set()
    _drain(queue)
    queue.close()
    assert recorder.calls == [("held", "uid-1", "resume"), ("held", "uid-1", "update2")]


def test_an_object_waiting_for_a_thread_is_queued_once(recorder: Recorder) -> None:
    queue = DecisionQueue(recorder, workers=1)
    queue.submit("ns", "held", "uid-h", "resume")  # takes the only thread
    assert recorder.started.acquire(timeout=WAIT)
    for trigger in ("resume", "create", "update"):
        queue.submit("ns", "app", "uid-a", trigger)
    assert queue.pending() == 2
    recorder.release.set()
    _drain(queue)
    queue.close()
    assert recorder.calls == [("held", "uid-h", "resume"), ("app", "uid-a", "update")]


def test_no_more_decisions_at_once_than_threads() -> None:
    recorder = Recorder()
    queue = DecisionQueue(recorder, workers=3)
    for i in range(200):
        queue.submit("ns", f"app-{i % 50}", f"uid-{i % 50}", "resume")
    _drain(queue)
    queue.close()
    assert 50 <= len(recorder.calls) <= 200
    assert {name for name, _, _ in recorder.calls} == {f"app-{i}" for i in range(50)}
    assert recorder.most <= 3


def test_close_finishes_the_decision_under_way_and_drops_the_rest(recorder: Recorder) -> None:
    queue = DecisionQueue(recorder, workers=1)
    queue.submit("ns", "held", "uid-h", "resume")
    assert recorder.started.acquire(timeout=WAIT)
    queue.submit("ns", "later", "uid-l", "resume")
    closing = threading.Thread(target=queue.close)
    closing.start()
    for _ in range(int(WAIT / 0.01)):  # the pending decision dropped, then the held one ends
        if queue.closed:
            break
        threading.Event().wait(0.01)
    recorder.release.set()
    closing.join(WAIT)
    assert not closing.is_alive()
    queue.submit("ns", "after", "uid-x", "resume")  # ignored: the next start resumes it
    assert [name for name, _, _ in recorder.calls] == ["held"]


BODY = {
    "metadata": {
        "name": "app",
        "namespace": "ns",
        "resourceVersion": "7",
        "labels": {"team": "a"},
        "annotations": {"keyrotor.io/rotate-now": "1"},
        "finalizers": ["keyrotor.io/finalizer"],
        "managedFields": [{"manager": "kubectl"}],
    },
    "spec": {"iamUser": "svc"},
    "status": {"secretArn": "arn:x"},
}


def _changed(**metadata: object) -> dict[str, object]:
    return {**BODY, "metadata": {**BODY["metadata"], **metadata}}  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("after", "same"),
    [
        # kopf wrote its last-handled configuration while the decision ran: record it as is
        (
            _changed(
                resourceVersion="8",
                managedFields=[{"manager": "kopf"}],
                annotations={
                    "keyrotor.io/rotate-now": "1",
                    "kopf.keyrotor.io/last-handled-configuration": "{}",
                },
            ),
            True,
        ),
        (_changed(resourceVersion="8", annotations={"keyrotor.io/rotate-now": "2"}), False),
        (_changed(resourceVersion="8", labels={"team": "b"}), False),
        (_changed(resourceVersion="8", finalizers=[]), False),
        (_changed(resourceVersion="8", deletionTimestamp="2026-01-01T00:00:00Z"), False),
        ({**BODY, "spec": {"iamUser": "other"}}, False),
        ({**BODY, "status": {}}, False),
    ],
)
def test_only_kopfs_bookkeeping_keeps_a_decision_valid(
    after: dict[str, object], same: bool
) -> None:
    assert kopf_bookkeeping_only(BODY, after) is same


def test_a_decision_that_raises_leaves_its_thread_working() -> None:
    calls: list[str] = []

    def decide(namespace: str, name: str, uid: str, trigger: str) -> None:
        calls.append(name)
        if name == "bad":
            raise RuntimeError("a bug")

    queue = DecisionQueue(decide, workers=1)
    queue.submit("ns", "bad", "uid-b", "resume")
    queue.submit("ns", "good", "uid-g", "resume")
    _drain(queue)
    queue.close()
    assert calls == ["bad", "good"]
