"""IAM policy evaluation for the AWS emulator: action, resource and condition matching.

moto can check IAM authorization, but it matches actions only ("resource-based access control"
and most condition keys are not evaluated, by moto's own account), so a call on another
installation's secret, role or function would be allowed. This evaluates identity policies the
way IAM does for one account, for the requests the emulator describes (:class:`Request`):

- an explicit Deny wins; otherwise some Allow must match; with a permissions boundary, the
  boundary must allow too;
- ``Action``/``NotAction`` with ``*`` and ``?`` wildcards, case-insensitive;
- ``Resource``/``NotResource`` with ``*`` and ``?`` wildcards, case-sensitive;
- conditions: the String, Arn, Bool and Null operators, ``...IfExists``, and the
  ``ForAllValues:``/``ForAnyValue:`` set qualifiers; condition key names are case-insensitive. A
  key the emulator did not put in the request context is absent, as in IAM (so a condition on a
  key it cannot know fails closed, and the test shows it).

Not evaluated: resource-based policies, SCPs, session policies, policy variables, the Numeric,
Date and IpAddress operators (none of keyrotor's documents uses them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ContextValue = str | Sequence[str]


@dataclass(frozen=True)
class Request:
    """One authorization question: may the principal do ``action`` on ``resource``?"""

    action: str  # service:Operation
    resource: str  # an ARN, or "*" for actions without a resource type
    context: Mapping[str, ContextValue] = field(default_factory=dict)

    def value(self, key: str) -> list[str] | None:
        for name, value in self.context.items():
            if name.lower() == key.lower():
                return [value] if isinstance(value, str) else list(value)
        return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, text: str, *, ignore_case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL
    return re.fullmatch(regex, text, flags) is not None


def _matches_action(statement: Mapping[str, Any], action: str) -> bool:
    if "NotAction" in statement:
        return not any(
            _wildcard(p, action, ignore_case=True) for p in _as_list(statement["NotAction"])
        )
    return any(
        _wildcard(p, action, ignore_case=True) for p in _as_list(statement.get("Action", []))
    )


def _matches_resource(statement: Mapping[str, Any], resource: str) -> bool:
    if "NotResource" in statement:
        return not any(
            _wildcard(p, resource, ignore_case=False) for p in _as_list(statement["NotResource"])
        )
    patterns = _as_list(statement.get("Resource", []))
    if resource == "*":
        return "*" in patterns
    return any(_wildcard(p, resource, ignore_case=False) for p in patterns)


def _compare(operator: str, policy_value: str, request_value: str) -> bool:
    if operator in ("StringEquals", "ArnEquals"):
        return request_value == policy_value
    if operator == "StringEqualsIgnoreCase":
        return request_value.lower() == policy_value.lower()
    if operator in ("StringLike", "ArnLike"):
        return _wildcard(policy_value, request_value, ignore_case=False)
    if operator == "Bool":
        return request_value.lower() == str(policy_value).lower()
    raise ValueError(f"condition operator {operator} is not evaluated by the emulator")


_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def _condition_holds(operator: str, key: str, wanted: Any, request: Request) -> bool:
    qualifier = ""
    if ":" in operator:
        qualifier, operator = operator.split(":", 1)
    values = request.value(key)
    wanted_values = [str(v).lower() if isinstance(v, bool) else str(v) for v in _as_list(wanted)]
    if operator == "Null":
        absent = values is None or values == []
        return any(absent == (w.lower() == "true") for w in wanted_values)
    if_exists = operator.endswith("IfExists")
    operator = operator.removesuffix("IfExists")
    if values is None:
        if qualifier == "ForAllValues":
            return True
        return if_exists
    negate = operator in _NEGATED
    base = _NEGATED.get(operator, operator)

    def one(value: str) -> bool:
        hit = any(_compare(base, w, value) for w in wanted_values)
        return not hit if negate else hit

    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in values)
    return any(one(v) for v in values) if not negate else all(one(v) for v in values)


def _conditions_hold(statement: Mapping[str, Any], request: Request) -> bool:
    for operator, by_key in (statement.get("Condition") or {}).items():
        for key, wanted in by_key.items():
            if not _condition_holds(operator, key, wanted, request):
                return False
    return True


def _decide(documents: Iterable[Mapping[str, Any]], request: Request) -> str:
    """'deny' (explicit), 'allow', or 'implicit' (nothing matched)."""
    allowed = False
    for document in documents:
        for statement in _as_list(document.get("Statement", [])):
            if not (
                _matches_action(statement, request.action)
                and _matches_resource(statement, request.resource)
                and _conditions_hold(statement, request)
            ):
                continue
            if statement.get("Effect") == "Deny":
                return "deny"
            allowed = True
    return "allow" if allowed else "implicit"


def is_allowed(
    policies: Iterable[Mapping[str, Any]],
    request: Request,
    boundary: Mapping[str, Any] | None = None,
) -> bool:
    """What IAM answers for an identity with these policies (and permissions boundary)."""
    if _decide(policies, request) != "allow":
        return False
    return boundary is None or _decide([boundary], request) == "allow"


def load(document: str | Mapping[str, Any]) -> Mapping[str, Any]:
    """A policy document as stored (JSON text, possibly URL-encoded) or already parsed."""
    if isinstance(document, Mapping):
        return document
    from urllib.parse import unquote

    text = document if document.lstrip().startswith("{") else unquote(document)
    parsed: Mapping[str, Any] = json.loads(text)
    return parsed
