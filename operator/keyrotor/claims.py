"""Which AccessKeyRotation objects want which IAM user: keyrotor's own claims map.

A decision reads it to tell a live claim from a stale one (``tenancy.claim_decision``) and the
oldest claimant of a free user (``tenancy.conflicting_claim``). Missing a live object here is
the worst mistake keyrotor could make (it would take that object's user for another object), so:

- it is filled by one paged list of every object kopf watches (the same namespaces; every shard's
  objects, each marked ``in_shard`` or not) in kopf's start-up handler, which kopf runs to the
  end before it starts any watcher (``kopf._core.reactor.running``: every root task waits for
  the started flag, set once the start-up activity finished), so no handler, nor the sync loop
  started there afterwards, decides before the whole list is in;
- it is kept current by ``handlers.claims_changed`` (``@kopf.on.event``), which kopf calls for
  every event of every object, deletions included, before that object's own handlers run;
- a decision made before the map was filled fails (``NotReadyError``) instead of deciding.

Between the start-up list and kopf's own first list, an object may come or go. One created then
is in kopf's list, so its event adds it. One deleted then is in neither kopf's list nor its
watch: nothing would ever remove it, and as a live claimant it would hold its user for ever.
Such entries are the ones kopf never reported (``watched`` false); once their number stops
falling, :func:`keep_current` lists again and :meth:`ClaimsMap.listed` drops whatever the new list
lacks and kopf has not reported since the list began (the same every half hour, for deletions
kopf's watch missed while it reconnected). The map's sequence number tells "not in the list"
(gone) from "reported since" (kopf's word is newer than the list's); tombstones keep a listed
object that kopf saw deleted meanwhile from coming back.

No I/O in :class:`ClaimsMap`; :func:`list_claims` and :func:`keep_current` do the listing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from keyrotor.allocator import release_free_memory
from keyrotor.errors import NotReadyError
from keyrotor.k8s import objects
from keyrotor.k8s.client import KubeApis
from keyrotor.shards import Shard, namespace_matches
from keyrotor.tenancy import Claim, holds_claim

log = logging.getLogger(__name__)

CHECK_EVERY = 60.0  # seconds between looks at the entries kopf has not reported
RESYNC_EVERY = 1800.0  # seconds between full lists regardless

Listed = dict[str, tuple[str, Claim]]  # uid -> (claim key, claim)


def claim_key(iam_user: str) -> str:
    """IAM user names are unique case-insensitively: one key for every spelling."""
    return iam_user.lower()


def claim_of(body: Mapping[str, Any], shard: Shard) -> tuple[str, str, Claim] | None:
    """(uid, claim key, claim) of one object's body; None without a uid."""
    metadata = body.get("metadata") or {}
    uid = str(metadata.get("uid") or "")
    if not uid:
        return None
    namespace = str(metadata.get("namespace") or "")
    spec = body.get("spec") or {}
    return (
        uid,
        claim_key(str(spec.get("iamUser", ""))),
        Claim(
            namespace=namespace,
            name=str(metadata.get("name") or ""),
            uid=uid,
            created=str(metadata.get("creationTimestamp") or ""),
            holding=holds_claim(dict(body.get("status") or {})),
            in_shard=shard.serves(namespace, dict(metadata.get("labels") or {})),
        ),
    )


@dataclass(frozen=True)
class _Held:
    key: str
    claim: Claim
    seq: int  # the map's sequence number when this entry was last written
    watched: bool  # kopf's watch has reported the object (its word, not only a list's)


@dataclass(frozen=True)
class Resynced:
    added: int
    updated: int
    removed: int


class ClaimsMap:
    """Claims by IAM user (case-insensitive key), every object kopf watches. Thread-safe: kopf's
    event handler writes from the event loop, decisions read from handler and sync threads."""

    def __init__(self, shard: Shard | None = None) -> None:
        self.shard = shard if shard is not None else Shard()
        self._lock = threading.Lock()
        self._by_uid: dict[str, _Held] = {}
        self._by_user: dict[str, dict[str, Claim]] = {}
        self._removed: dict[str, int] = {}  # uid -> seq of its removal, since a list began
        self._seq = 0
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_uid)

    def unwatched(self) -> int:
        """Entries from a list that kopf has not reported (yet)."""
        with self._lock:
            return sum(1 for held in self._by_uid.values() if not held.watched)

    def claims_for(self, iam_user: str) -> tuple[Claim, ...]:
        """Every object that wants ``iam_user`` (any spelling), in this shard or not."""
        with self._lock:
            if not self._loaded:
                raise NotReadyError("the claims map is not filled yet", service="kubernetes")
            return tuple(self._by_user.get(claim_key(iam_user), {}).values())

    def observe(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        """One of kopf's events (a listed object, an addition, a change, a deletion)."""
        found = claim_of(body, self.shard)
        if found is None:
            return
        uid, key, claim = found
        with self._lock:
            self._seq += 1
            if deleted:
                self._drop(uid)
            else:
                self._put(uid, _Held(key, claim, self._seq, watched=True))

    def begin_listing(self) -> int:
        """Call before the list is requested; pass the answer to :meth:`listed`."""
        with self._lock:
            self._seq += 1
            self._removed.clear()  # only removals after this point matter to this list
            return self._seq

    def listed(self, since: int, claims: Listed, namespaces: Collection[str] | None) -> Resynced:
        """A complete list, requested after ``begin_listing`` returned ``since``, of the
        objects in ``namespaces`` (None: every namespace). An entry written before ``since``
        takes the list's word (it is newer); one written after keeps kopf's. An entry the list
        lacks was deleted before the list was taken, unless kopf reported it since."""
        added = updated = removed = 0
        with self._lock:
            self._seq += 1
            for uid, held in list(self._by_uid.items()):
                if held.seq > since or uid in claims:
                    continue
                if namespaces is not None and held.claim.namespace not in namespaces:
                    continue  # not listed: no word on it
                self._drop(uid)
                removed += 1
            for uid, (key, claim) in claims.items():
                held_now = self._by_uid.get(uid)
                if held_now is None:
                    if self._removed.get(uid, 0) > since:
                        continue  # deleted after the list was taken
                    self._put(uid, _Held(key, claim, self._seq, watched=False))
                    added += 1
                elif held_now.seq <= since:
                    self._put(uid, _Held(key, claim, self._seq, watched=held_now.watched))
                    updated += 1
            self._loaded = True
        return Resynced(added=added, updated=updated, removed=removed)

    def _put(self, uid: str, held: _Held) -> None:
        before = self._by_uid.get(uid)
        if before is not None and before.key != held.key:
            self._unindex(uid, before.key)
        self._by_uid[uid] = held
        self._by_user.setdefault(held.key, {})[uid] = held.claim

    def _drop(self, uid: str) -> None:
        held = self._by_uid.pop(uid, None)
        self._removed[uid] = self._seq
        if held is not None:
            self._unindex(uid, held.key)

    def _unindex(self, uid: str, key: str) -> None:
        claims = self._by_user.get(key)
        if claims is not None:
            claims.pop(uid, None)
            if not claims:
                del self._by_user[key]


def _namespaces(kube: KubeApis, patterns: tuple[str, ...]) -> list[str] | None:
    """The namespaces kopf watches: None for every namespace; else as kopf resolves its
    patterns (the namespaces that match them, or, without the right to list namespaces, the
    patterns that name one namespace exactly)."""
    if not patterns:
        return None
    names = objects.namespace_names(kube)
    if names is None:  # kopf's own fallback when it may not list namespaces
        return [p for p in patterns if not p.startswith("!") and not set(p) & set("*?[]")]
    return [name for name in names if namespace_matches(name, patterns)]


def list_claims(
    kube: KubeApis, patterns: tuple[str, ...], shard: Shard
) -> tuple[Listed, list[str] | None]:
    """Every object kopf watches, as claims, page by page (no page kept): the claims and the
    namespaces listed (None: every namespace)."""
    namespaces = _namespaces(kube, patterns)
    claims: Listed = {}
    scopes: list[str | None] = [None] if namespaces is None else list(namespaces)
    for namespace in scopes:
        for page in _pages(kube, namespace):
            for body in page:
                found = claim_of(body, shard)
                if found is not None:
                    claims[found[0]] = (found[1], found[2])
    return claims, namespaces


def _pages(kube: KubeApis, namespace: str | None) -> Iterator[list[dict[str, Any]]]:
    token: str | None = None
    while True:
        items, token = objects.list_objects(kube, namespace, continue_token=token)
        yield items
        if not token:
            return


_resync_lock = threading.Lock()


def resync(kube: KubeApis, claims: ClaimsMap, patterns: tuple[str, ...]) -> Resynced:
    """List every object kopf watches and bring the map in line (one list at a time)."""
    with _resync_lock:
        began = time.monotonic()
        since = claims.begin_listing()
        listed, namespaces = list_claims(kube, patterns, claims.shard)
        outcome = claims.listed(since, listed, namespaces)
        count = len(listed)
        del listed
        release_free_memory()  # what decoding the pages freed goes back, as after a sweep
    log.info(
        "claims map: %d objects listed in %.1fs (%d added, %d removed)",
        count,
        time.monotonic() - began,
        outcome.added,
        outcome.removed,
    )
    return outcome


def listing_due(*, unwatched: int, seen: int | None, left: int, full_due: bool) -> bool:
    """Whether to list again: the periodic list is due, or the entries kopf has not reported
    stopped falling in number since the last look (``seen``) and are not just those the last
    list left (alive, kopf has not come to them yet)."""
    return full_due or (unwatched > 0 and unwatched == seen and unwatched != left)


async def keep_current(
    kube: KubeApis,
    claims: ClaimsMap,
    patterns: tuple[str, ...],
    stop: asyncio.Event,
    *,
    check_every: float = CHECK_EVERY,
    resync_every: float = RESYNC_EVERY,
) -> None:
    """List again when :func:`listing_due` says so, until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    last_full = loop.time()
    seen: int | None = None  # unwatched entries at the previous look
    left = 0  # unwatched entries the last list left
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=check_every)
            return
        except TimeoutError:
            pass
        unwatched = claims.unwatched()
        due = listing_due(
            unwatched=unwatched,
            seen=seen,
            left=left,
            full_due=loop.time() - last_full >= resync_every,
        )
        seen = unwatched
        if not due:
            continue
        try:
            await asyncio.to_thread(resync, kube, claims, patterns)
        except Exception as exc:  # the next look tries again
            log.warning("claims map: listing failed, trying again later: %s", exc)
            continue
        last_full = loop.time()
        left = seen = claims.unwatched()
