"""Sharding: which AccessKeyRotation objects one operator process serves, and who it is. No I/O.

A very large cluster is split between several operator Deployments (shards). Each is started with
``--shard NAME`` and serves the objects that match its ``--selector`` (a Kubernetes label
selector) and lie in its ``--namespace`` list (kopf watches only those). Everything a process does
stays within its shard: its handlers, its index (so the sync loop, Secret events and event mode
look only at its objects), its finalizer, its Lease and its identity in IAM claims.

Identity: a claim on an IAM user names ``<installation id>/<object uid>``. An unsharded process
keeps the installation id (``<cluster>@<kube-system uid>``), so an existing install keeps its
claims; a shard appends ``:<shard>`` (cluster names, uids and shard names have no ``:``). A shard
judges as stale only the claims of its own identity, never another shard's.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from keyrotor.model import FINALIZER

SHARD_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$")
# A label key (optional DNS prefix, then a name) and a label value, as Kubernetes spells them.
_KEY = (
    r"(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_EQ_RE = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY})$")


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector: ``key=v``, ``key!=v``, ``key in (a,b)``,
    ``key notin (a,b)``, ``key``, ``!key``."""

    key: str
    operator: str  # "in", "notin", "exists", "!exists" ("=" is "in", "!=" is "notin")
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        inside = present and labels[self.key] in self.values
        return inside if self.operator == "in" else not inside


def _split_terms(text: str) -> list[str]:
    """Commas separate terms, except inside a set's parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise ValueError("unbalanced parentheses")
        if char == "," and depth == 0:
            terms.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise ValueError("unbalanced parentheses")
    terms.append(text[start:].strip())
    return terms


def _requirement(term: str) -> Requirement:
    if match := _SET_RE.match(term):
        values = [v.strip() for v in match.group(3).split(",")]
        if not values or any(not _VALUE_RE.match(v) or not v for v in values):
            raise ValueError(f"{term!r}: a set needs one or more label values")
        return Requirement(match.group(1), match.group(2), frozenset(values))
    if match := _EQ_RE.match(term):
        operator = "notin" if match.group(2) == "!=" else "in"
        return Requirement(match.group(1), operator, frozenset({match.group(3)}))
    if match := _EXISTS_RE.match(term):
        return Requirement(match.group(2), "!exists" if match.group(1) else "exists")
    raise ValueError(
        f"{term!r} is not a label selector term (key=value, key!=value, "
        f"key in (a,b), key notin (a,b), key, !key)"
    )


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector as ``kubectl -l`` takes it; every term must hold."""

    text: str
    requirements: tuple[Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        terms = _split_terms(text.strip())
        if terms == [""]:
            raise ValueError("empty selector")
        return cls(text.strip(), tuple(_requirement(term) for term in terms))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)


def namespace_matches(namespace: str, patterns: tuple[str, ...]) -> bool:
    """kopf's namespace patterns: globs, ``!glob`` excludes; none means every namespace."""
    included = [p for p in patterns if not p.startswith("!")]
    excluded = [p[1:] for p in patterns if p.startswith("!")]
    if included and not any(fnmatch.fnmatchcase(namespace, p) for p in included):
        return False
    return not any(fnmatch.fnmatchcase(namespace, p) for p in excluded)


@dataclass(frozen=True)
class Shard:
    """The objects this process serves. The default (no name, no selector, every namespace it
    watches) is the unsharded operator, exactly as before sharding existed."""

    name: str = ""
    selector: LabelSelector | None = None
    namespaces: tuple[str, ...] = ()

    def serves(self, namespace: str, labels: Mapping[str, str] | None) -> bool:
        if not namespace_matches(namespace, self.namespaces):
            return False
        return self.selector is None or self.selector.matches(labels)

    def serves_body(self, body: Mapping[str, object]) -> bool:
        metadata = body.get("metadata")
        meta = metadata if isinstance(metadata, Mapping) else {}
        labels = meta.get("labels")
        return self.serves(str(meta.get("namespace") or ""), labels if labels else None)

    def identity(self, installation_id: str) -> str:
        """This process's name in claims: the installation id, plus ``:<shard>`` for a shard."""
        return f"{installation_id}:{self.name}" if self.name else installation_id

    @property
    def finalizer(self) -> str:
        """One finalizer per shard: kopf removes its finalizer from an object that no longer
        matches its filters, so two shards sharing one would take it off each other for ever."""
        return f"{FINALIZER}-{self.name}" if self.name else FINALIZER

    def lease_name(self, cluster_name: str) -> str:
        """One Lease per shard (a Lease name may hold dots; cluster names hold none)."""
        return f"keyrotor-{cluster_name}.{self.name}" if self.name else f"keyrotor-{cluster_name}"

    @property
    def reporting_instance(self) -> str:
        """Who posted an Event (its reportingInstance)."""
        return f"keyrotor-{self.name}" if self.name else "keyrotor"

    def describe(self) -> str:
        parts = [f"shard {self.name or '(default)'}"]
        if self.selector is not None:
            parts.append(f"selector {self.selector.text!r}")
        if self.namespaces:
            parts.append(f"namespaces {', '.join(self.namespaces)}")
        return ", ".join(parts)


def installation_of(identity: str) -> str:
    """The installation id a claim identity belongs to (its shard dropped)."""
    return identity.partition(":")[0]
