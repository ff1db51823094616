"""An AWS emulator for the tests and ``keyrotor demo``: moto's server, made to behave like AWS.

:class:`AwsEmulator` starts moto's ``ThreadedMotoServer`` on 127.0.0.1 (a free port) with a WSGI
layer around moto's application. That layer and the moto patches in this module are the one place
where the emulator departs from plain moto. Each departure restores what AWS does where moto 5.2.5
differs in a way that would make our tests lie, and each has its own test in
``tests/integration/test_aws_emulator.py`` (named below). Doc paths are under
https://docs.aws.amazon.com/. The patches reach into moto's internals, so moto is pinned to
exactly that release (:data:`MOTO_VERSION`, sandbox/pyproject.toml); ``tests/unit/
test_packaging.py`` fails on any other.

1. Rotation runs the uploaded Lambda.
   moto:     RotateSecret invokes the function through Docker, synchronously, then moves
             AWSCURRENT itself whatever the steps did.
   restored: the handler from the zip uploaded with CreateFunction/UpdateFunctionCode runs
             in-process (a fresh module per invocation, its boto3 pointed at this server) in a
             background thread. RotateSecret returns at once with VersionId = the token, whose
             version carries AWSPENDING and no value. A failing step is retried twice (same step,
             same token), as Lambda retries an asynchronous invocation; if it still fails the
             rotation stops: AWSCURRENT stays where it was, AWSPENDING stays on the failed version.
   doc:      secretsmanager/latest/userguide/rotate-secrets_how.html,
             lambda/latest/dg/invocation-async-error-handling.html
   tests:    test_rotate_secret_runs_the_uploaded_handler, test_failing_step_is_retried_then_stops
2. RotateSecret refuses while a rotation is incomplete.
   moto:     refuses while AWSPENDING is on the AWSCURRENT version, allows it while AWSPENDING is
             on another version (inverted), and silently drops the old AWSPENDING label.
   restored: InvalidRequestException ("A previous rotation isn't complete. ...") while AWSPENDING
             is on a version other than AWSCURRENT; a second rotation after a clean one works.
   doc:      secretsmanager/latest/userguide/rotate-secrets_lambda-functions.html ("AWSPENDING
             ... attached to the same version as AWSCURRENT, or not attached to any version")
   test:     test_rotate_secret_refuses_while_previous_rotation_is_incomplete
3. The AWSCURRENT version is the default version.
   moto:     UpdateSecretVersionStage moves the AWSCURRENT label but not moto's default version,
             so GetSecretValue and BatchGetSecretValue without VersionId/VersionStage keep
             returning the old value (checked: still so in 5.2.5).
   restored: moving AWSCURRENT also moves the default version.
   doc:      secretsmanager/latest/apireference/API_GetSecretValue.html ("If you don't specify
             either a VersionStage or VersionId, ... the version with the VersionStage value of
             AWSCURRENT")
   test:     test_get_secret_value_follows_awscurrent_after_stage_move
4. Rotation rules are stored and reported.
   moto:     keeps only AutomaticallyAfterDays; no ScheduleExpression, no Duration; RotationEnabled
             only with AutomaticallyAfterDays; RotateImmediately=False still invokes the function.
   restored: ScheduleExpression (rate(N hours|days), cron(...)), AutomaticallyAfterDays and
             Duration are validated, stored and reported by DescribeSecret/ListSecrets with
             RotationEnabled, LastRotatedDate and NextRotationDate (for rate()/days: the last
             rotation, or the configuration time, plus the interval); RotateImmediately=False only
             configures.
   doc:      secretsmanager/latest/apireference/API_RotationRulesType.html, API_RotateSecret.html
   tests:    test_rotation_rules_are_reported, test_rotate_immediately_false_does_not_rotate
5. Versions keep their creation date.
   moto:     ListSecretVersionIds reports every version's CreatedDate as "now".
   restored: the version's own creation date (the Lambda recognises its orphans by it).
   doc:      secretsmanager/latest/apireference/API_SecretVersionsListEntry.html
   test:     test_list_secret_version_ids_reports_creation_dates
6. Access keys are authenticated.
   moto:     accepts any access key id, deleted and inactive keys included (GetCallerIdentity
             falls back to a default identity).
   restored: every request signed with an IAM user's access key is checked: unknown, deleted and
             inactive keys get InvalidClientTokenId, a wrong secret gets SignatureDoesNotMatch;
             GetCallerIdentity answers with the key's user.
   doc:      STS/latest/APIReference/CommonErrors.html,
             IAM/latest/UserGuide/id_credentials_access-keys.html (inactive keys "cannot be used")
   tests:    test_deleted_and_inactive_keys_are_refused, test_wrong_secret_is_refused
7. A scheduler.
   moto:     none.
   restored: run_due_rotations(now) starts the rotation of every secret whose NextRotationDate
             <= now, as the rotation schedule would (tests cannot wait days).
   doc:      secretsmanager/latest/userguide/rotate-secrets_schedule.html
   test:     test_run_due_rotations_rotates_secrets_that_are_due

8. LastRotatedDate comes after AWSCURRENT moves.
   moto:     no rotation of its own (see 1).
   restored: a rotation's LastRotatedDate and next NextRotationDate are recorded after the last
             step returns, as AWS records them when the function's finishSecret has already moved
             AWSCURRENT; :attr:`AwsEmulator.record_rotation_delay` widens that gap so a test can
             see a client that mirrors the new version before the rotation's time is known.
   doc:      secretsmanager/latest/apireference/API_DescribeSecret.html (LastRotatedDate: "the
             last date and time that Secrets Manager rotated the secret")
   test:     test_last_rotated_date_is_recorded_after_awscurrent_moves

9. The credential report is AWS's.
   moto:     GetCredentialReport builds the CSV anew at each call (a key deleted a second ago is
             already gone) with GeneratedTime always 2015-02-02T20:02:02Z; GenerateCredentialReport
             answers STARTED once, then COMPLETE, and never generates again; it is never in
             progress; there is no row for the root user; access_key_N_last_used_region and
             _service are "not_supported"; password columns carry dates without a password.
   restored: GenerateCredentialReport takes a snapshot (STARTED) when there is no report or the
             last one is older than four hours, answers INPROGRESS while it is being generated
             (:attr:`AwsEmulator.credential_report_seconds`, default 0) and COMPLETE otherwise,
             without generating again. GetCredentialReport answers ReportNotPresent before the
             first report, ReportInProgress (404) during generation, then the snapshot with the
             time it was taken as GeneratedTime. The snapshot has the root user's row first
             (``<root_account>``), then one row per user with AWS's 22 columns: each existing key
             in a slot (in creation order), its status, its CreateDate (to the second) as
             last_rotated, and its last use (date, region, service) or N/A; password columns N/A
             without a password. :meth:`AwsEmulator.age_credential_report` dates the report back
             (tests cannot wait four hours).
   doc:      IAM/latest/UserGuide/id_credentials_getting-report.html,
             IAM/latest/APIReference/API_GenerateCredentialReport.html, API_GetCredentialReport.html
   tests:    test_credential_report_has_awss_rows_and_columns,
             test_credential_report_is_a_snapshot_regenerated_after_four_hours,
             test_credential_report_is_in_progress_while_generated
10. Keys can be aged (test support: AWS's keys age only with time).
   moto:     a key's CreateDate and last use are "now" when it is created or used.
   restored: :meth:`AwsEmulator.age_access_key` sets a key's CreateDate (ListAccessKeys, the
             credential report's last_rotated) and its last use (GetAccessKeyLastUsed, the
             report's last_used_date/region/service) to given past times, so a test can hold keys
             1, 89, 91 or 400 days old.
   doc:      IAM/latest/APIReference/API_AccessKeyMetadata.html, API_AccessKeyLastUsed.html
   test:     test_age_access_key_sets_create_date_and_last_use
11. An access key's CreateDate is to the second.
   moto:     CreateAccessKey and ListAccessKeys report it with microseconds.
   restored: whole seconds, as AWS reports it and as the credential report's last_rotated has
             it (code that matched the two exactly would pass here and fail on AWS otherwise).
   doc:      IAM/latest/APIReference/API_AccessKeyMetadata.html (example responses)
   test:     test_access_key_create_date_is_to_the_second
12. Secrets Manager's events reach EventBridge (and a long poll does not stop the server).
   moto:     no CloudTrail, so Secrets Manager sends no event to EventBridge; and an SQS
             ReceiveMessage with WaitTimeSeconds waits inside moto, which here would hold the
             emulator's lock (every other request) for up to 20 s.
   restored: every successful Secrets Manager write (PutSecretValue, UpdateSecretVersionStage,
             RotateSecret, CreateSecret, ...; EventBridge gets no read-only calls) is put on
             moto's default event bus as "AWS API Call via CloudTrail" (request parameters in
             lowerCamelCase, secret values hidden, the response's arn/name/versionId), and each
             rotation the emulator runs emits "AWS Service Event via CloudTrail" RotationStarted,
             then RotationSucceeded or RotationFailed (additionalEventData.SecretId = the ARN);
             shapes in :mod:`keyrotor_sandbox.cloudtrail`. Every enabled rule of the default bus
             whose pattern matches delivers them (moto's rules match and send to SQS themselves;
             moto's own PutEvents would also use disabled rules).
             :attr:`AwsEmulator.drop_events` loses them (a test of the safety net);
             :attr:`AwsEmulator.emitted_events` records what was sent. A long poll is answered by
             short receives, the lock released in between.
   doc:      secretsmanager/latest/userguide/monitoring-eventbridge.html,
             cloudtrail_log_entries.html, eventbridge/latest/userguide/
             eb-service-event-cloudtrail.html, AWSSimpleQueueService/latest/APIReference/
             API_ReceiveMessage.html (WaitTimeSeconds)
   tests:    test_rotation_emits_cloudtrail_events_to_eventbridge_rules,
             test_rules_match_the_events_patterns, test_a_disabled_rule_delivers_nothing,
             test_drop_events_loses_them, test_long_poll_does_not_block_other_requests,
             test_plain_moto_sends_no_secrets_manager_events

13. IAM authorization, with resources and conditions (for the principals a test names).
   moto:     authorization is off; turned on (INITIAL_NO_AUTH_ACTION_COUNT), it matches actions
             only: resources and most condition keys are not evaluated (moto's "IAM-like Access
             Control"), so a call on another installation's secret, role or function passes.
   restored: for the principals given to :meth:`AwsEmulator.enforce_iam` (an IAM user whose
             access key signs the request, or a role: the rotation Lambda runs with credentials
             the emulator issues for its execution role), every request is authorized by
             :mod:`keyrotor_sandbox.iam_authz` against the principal's identity policies (inline
             and attached) and permissions boundary: the action, the ARN of the secret, function,
             role or user the request names, and the condition keys the request carries
             (aws:RequestTag/*, aws:TagKeys, aws:ResourceTag/*, iam:ResourceTag/*,
             iam:PassedToService, iam:PermissionsBoundary, secretsmanager:KmsKeyId,
             secretsmanager:RotationLambdaARN, secretsmanager:VersionStage,
             secretsmanager:ForceDeleteWithoutRecovery, lambda:Principal), with the checks AWS adds
             (iam:PassRole when a function is given a role, TagResource/TagRole when a resource is
             created with tags). A refused call gets AccessDenied(Exception) with AWS's message and
             is recorded in :attr:`AwsEmulator.denials`. CreateRole with a permissions boundary
             that does not exist is NoSuchEntity.
   doc:      IAM/latest/UserGuide/reference_policies_evaluation-logic.html,
             reference_policies_condition-keys.html, access_policies_boundaries.html
   tests:    tests/integration/test_aws_emulator_authz.py

14. IAM user names are not distinguished by case.
   moto:     user names are case-sensitive: CreateUser makes ``svc`` next to ``Svc``, and
             GetUser, ListUserTags, TagUser, UntagUser, ListAccessKeys, CreateAccessKey,
             UpdateAccessKey, DeleteAccessKey, DeleteUser (...) with another spelling answer
             NoSuchEntity.
   restored: CreateUser refuses a name that differs from an existing user's only by case
             (EntityAlreadyExists); every call that names a user (moto's ``get_user`` lookup,
             and DeleteUser) finds it whatever the case, and GetUser answers with the name as it
             was created (the canonical one). Fix 13 authorizes a call that names a user in
             another spelling on that user (its ARN and tags as created).
   doc:      IAM/latest/APIReference/API_CreateUser.html (UserName: "IAM user, group, role, and
             policy names must be unique within the account. Names are not distinguished by
             case."), IAM/latest/UserGuide/reference_iam-quotas.html
   tests:    test_user_names_are_not_distinguished_by_case,
             test_plain_moto_user_names_are_case_sensitive

15. EventBridge calls API destinations as AWS does.
   moto:     a rule's API-destination target is called only with MOTO_EVENTS_INVOKE_HTTP=true,
             synchronously, with no body (not the event) and without the connection's
             authorization header, never retried; DescribeConnection's answer carries the API
             key's value (boto3 drops it, but it is on the wire).
   restored: every matching event is POSTed (the destination's method) as EventBridge's JSON
             (``time`` in ISO 8601) to the destination's endpoint with ``Content-Type:
             application/json; charset=utf-8`` and the connection's API-key header
             (ApiKeyName: ApiKeyValue), from a thread of its own (delivery is asynchronous);
             401, 407, 409, 429, 5xx and no answer within 5 s are retried with exponential
             backoff (from 0.5 s, doubling, at most 30 s, with jitter: AWS does not document
             its steps) within the target's RetryPolicy (default 185 retries, 24 hours); other
             answers end the delivery. :attr:`AwsEmulator.pushes` records each request's
             endpoint and status; :attr:`AwsEmulator.drop_events` loses pushes too (fix 12).
             DescribeConnection answers the API key's name only (and no basic-auth password,
             OAuth client secret or secret invocation parameter). Fix 13 authorizes connection
             and API destination calls on their own ARNs, CreateApiDestination also on its
             connection, and PutTargets with a RoleArn also as ``iam:PassRole`` to
             ``events.amazonaws.com``.
   doc:      eventbridge/latest/userguide/eb-api-destinations.html (timeout, retried codes),
             eb-rule-retry-policy.html, eventbridge/latest/APIReference/
             API_ConnectionApiKeyAuthResponseParameters.html
   tests:    test_api_destinations_receive_the_event_with_the_connections_api_key,
             test_api_destinations_are_retried_on_5xx_and_429_not_on_other_4xx,
             test_describe_connection_answers_the_key_name_not_its_value,
             test_plain_moto_posts_no_event_and_no_key_to_api_destinations

Not restored (left as moto does it): authorization of principals not given to enforce_iam
(fix 13; IAM policies are not evaluated for them; nor is an
SQS queue policy when EventBridge delivers), CloudTrail's delivery delay (events arrive at once;
on AWS, seconds to minutes, best effort), a queue's ReceiveMessageWaitTimeSeconds (a long poll
must name WaitTimeSeconds), an API destination's
InvocationRateLimitPerSecond (requests are not paced), the
rotation window (Duration is stored and reported, rotations start when asked), NextRotationDate for
cron() schedules (not computed), ListSecretVersionIds lists deprecated versions too; the credential
report never expires (ReportExpired: AWS does not say after how long), a key's last use is
recorded at every request (AWS records the first use in each 15 minutes), and which slot a key
takes after the other one was deleted is not documented by AWS (keyrotor matches keys to slots by
creation time, never by slot number).

The access key id ``testing`` (:data:`ROOT_ACCESS_KEY_ID`) stands for the account's
administrator (and for the operator, unless a test gives it an IAM user of its own); it is not
checked.

Test support: :attr:`AwsEmulator.calls` records every API call the server handled,
:attr:`AwsEmulator.faults` injects failures at the HTTP layer in each service's wire protocol,
:meth:`AwsEmulator.wait_for_rotations` waits for the background rotations,
:meth:`AwsEmulator.reset` empties the account.

The in-process Lambda never reads or writes ``os.environ`` per invocation: its module's ``boto3``
is bound to a session of its own (the Lambda role's key, the region, this server's endpoint), so
rotations running in background threads cannot race with other threads. The only process-wide
setting is the ``KEYROTOR_TEST_*`` backoff, set once by :meth:`AwsEmulator.start` (``setdefault``)
when ``fast_test_backoff`` is true.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import random
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from keyrotor_sandbox import cloudtrail, iam_authz
from keyrotor_sandbox.iam_authz import Request, is_allowed

logger = logging.getLogger(__name__)

# The moto release every fix below was written and checked against. Changing moto means checking
# each numbered fix again (its test, and the test that shows plain moto still needs it).
MOTO_VERSION = "5.2.5"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
ROOT_ACCESS_KEY_ID = "testing"
ROOT_SECRET_ACCESS_KEY = "testing"  # noqa: S105 - the emulator's well-known dummy credential
LAMBDA_RETRIES = 2  # Lambda retries a failed asynchronous invocation twice
ROTATION_STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
STEP_HEADER = "X-Keyrotor-Lambda-Step"
PREVIOUS_ROTATION_INCOMPLETE = (
    "A previous rotation isn't complete. That rotation will be reattempted."
)
_FAST_TEST_BACKOFF = {
    "KEYROTOR_TEST_ATTEMPTS": "4",
    "KEYROTOR_TEST_BASE_DELAY_SECONDS": "0.005",
    "KEYROTOR_TEST_MAX_DELAY_SECONDS": "0.02",
}

When = Literal["before", "after"]
# Fix 15: how EventBridge calls an API destination (eventbridge/latest/userguide/
# eb-api-destinations.html): a 5 s timeout; these codes (and 5xx, and no answer) are retried.
PUSH_TIMEOUT = 5.0
PUSH_RETRIED = (401, 407, 409, 429)
PUSH_BACKOFF = 0.5  # seconds before the first retry; doubled each time (AWS: not documented)
PUSH_BACKOFF_CAP = 30.0


@dataclass(frozen=True)
class _Push:
    """One event on its way to an API destination."""

    url: str
    method: str
    headers: Mapping[str, str]
    body: bytes
    attempts: int
    max_age: float


class Call(NamedTuple):
    """One API call the server handled; ``step`` is the Lambda step that made it, if any."""

    service: str
    operation: str
    step: str | None = None


@dataclass(frozen=True)
class Denial:
    """A request that IAM authorization (fix 13) refused."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, Any]


class CallLog:
    """Every API call the server handled, in order. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []

    def record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def pairs(self) -> list[tuple[str, str]]:
        """The calls as (service, operation) pairs."""
        return [(c.service, c.operation) for c in self.snapshot()]

    def count(self, operation: str | None = None, service: str | None = None) -> int:
        return sum(
            1
            for c in self.snapshot()
            if (operation is None or c.operation == operation)
            and (service is None or c.service == service)
        )

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(self.snapshot())


@dataclass
class _Rule:
    kind: Literal["api", "lambda"]
    operation: str  # API operation name, or the Lambda step
    nth: int
    times: int
    when: When
    error: str | None = None
    service: str | None = None
    step: str | None = None
    seen: int = 0

    def matches(self, service: str, operation: str, step: str | None) -> bool:
        return (
            operation == self.operation
            and (self.service is None or service == self.service)
            and (self.step is None or step == self.step)
        )


@dataclass(frozen=True)
class FiredFault:
    service: str
    operation: str
    when: When
    error: str
    step: str | None


class InjectedLambdaCrash(RuntimeError):
    """Raised inside a Lambda step by :meth:`Faults.crash_lambda`."""


class Faults:
    """Injected failures. Each rule counts the matching calls made after it was added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self.fired: list[FiredFault] = []

    def fail(
        self,
        operation: str,
        nth: int = 1,
        when: When = "before",
        error: str | None = None,
        *,
        service: str | None = None,
        step: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the ``nth`` call of ``operation`` (and the ``times - 1`` after it) fail over HTTP.

        ``when="before"``: the call does not happen; ``"after"``: it takes effect and the client
        gets the error instead of the answer (a lost response). ``error`` defaults to access
        denied, which botocore does not retry; "Throttling"/"ThrottlingException" becomes the
        service's own throttling code (retried by botocore). ``step`` limits the rule to calls
        made by that Lambda step, ``service`` to one service.
        """
        if nth < 1 or times < 1:
            raise ValueError("nth and times start at 1")
        with self._lock:
            self._rules.append(
                _Rule("api", operation, nth, times, when, error, service=service, step=step)
            )

    def crash_lambda(
        self, step: str, nth: int = 1, when: When = "before", *, times: int = 1
    ) -> None:
        """Raise :class:`InjectedLambdaCrash` in the ``nth`` invocation of a rotation step.

        ``when="after"`` runs the step's code first (its effects stay), then fails the
        invocation, as a Lambda timeout after the work would. ``times=LAMBDA_RETRIES + 1``
        fails every attempt, which stops the rotation.
        """
        if step not in ROTATION_STEPS:
            raise ValueError(f"unknown rotation step {step!r}")
        with self._lock:
            self._rules.append(_Rule("lambda", step, nth, times, when))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self.fired.clear()

    def _take(self, kind: str, service: str, operation: str, step: str | None) -> _Rule | None:
        with self._lock:
            hit: _Rule | None = None
            for rule in self._rules:
                if rule.kind == kind and rule.matches(service, operation, step):
                    rule.seen += 1
                    if hit is None and rule.nth <= rule.seen < rule.nth + rule.times:
                        hit = rule
            if hit is not None:
                error = hit.error or ("InjectedLambdaCrash" if kind == "lambda" else "")
                self.fired.append(FiredFault(service, operation, hit.when, error, step))
            return hit


@dataclass
class Rotation:
    """One rotation the emulator ran (or is running)."""

    secret_arn: str
    token: str
    lambda_arn: str
    started: datetime
    scheduled: datetime  # the time the next rotation is counted from (the scheduler's `now`)
    finished: datetime | None = None
    succeeded: bool | None = None
    failed_step: str | None = None
    error: str | None = None  # exception type and message of the last failed attempt
    invocations: list[tuple[str, bool]] = field(default_factory=list)  # (step, ok)


class _LambdaContext:
    def __init__(self, function_arn: str) -> None:
        self.invoked_function_arn = function_arn
        self.function_name = function_arn.rsplit(":", 1)[-1]
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + 900

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _LambdaBoto3:
    """What the handler module sees as ``boto3``: clients bound to the emulator.

    In AWS the runtime gives the function its role's credentials and region through the
    environment; here they come from this object, so no thread touches ``os.environ``.
    """

    def __init__(self, emulator: AwsEmulator, step: str, role_arn: str | None = None) -> None:
        self._emulator = emulator
        self._step = step
        self._role_arn = role_arn

    def client(self, service_name: str, **kwargs: Any) -> Any:
        if self._role_arn and "aws_access_key_id" not in kwargs:
            # The execution role's session credentials, as the Lambda runtime provides them.
            key_id, secret = self._emulator.role_credentials(self._role_arn)
            kwargs.update(aws_access_key_id=key_id, aws_secret_access_key=secret)
        client = self._emulator.client(service_name, **kwargs)

        def mark(request: Any, **_: Any) -> None:
            request.headers[STEP_HEADER] = self._step

        client.meta.events.register("before-send", mark)
        return client


# --- moto patches, active only while the emulator's server handles a request -------------------

# What a connection's DescribeConnection leaves out (eventbridge/latest/APIReference/
# API_ConnectionAuthResponseParameters.html: ApiKeyName only; Username only; ClientID only).
_CONNECTION_SECRETS = {
    "ApiKeyAuthParameters": ("ApiKeyValue",),
    "BasicAuthParameters": ("Password",),
    "OAuthParameters": ("ClientParameters.ClientSecret",),
}


def _without_connection_secrets(auth: Mapping[str, Any] | None) -> dict[str, Any]:
    result = json.loads(json.dumps(dict(auth or {})))
    for section, fields in _CONNECTION_SECRETS.items():
        for path in fields:
            *parents, last = path.split(".")
            node = result.get(section)
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(last, None)
    for parameters in (result.get("InvocationHttpParameters") or {}).values():
        for parameter in parameters if isinstance(parameters, list) else []:
            if isinstance(parameter, dict) and parameter.get("IsValueSecret"):
                parameter.pop("Value", None)
    return dict(result)


_context = threading.local()
_patch_lock = threading.Lock()
_patched = False


def _active() -> AwsEmulator | None:
    emulator: AwsEmulator | None = getattr(_context, "emulator", None)
    return emulator


def _install_moto_patches() -> None:
    global _patched
    with _patch_lock:
        if _patched:
            return
        from moto.secretsmanager import models as sm

        backend_cls = sm.SecretsManagerBackend
        original_rotate = backend_cls.rotate_secret
        original_stage = backend_cls.update_secret_version_stage
        original_versions = backend_cls.list_secret_version_ids
        original_to_dict = sm.FakeSecret.to_dict

        def rotate_secret(self: Any, *args: Any, **kwargs: Any) -> Any:
            emulator = _active()
            if emulator is None:
                return original_rotate(self, *args, **kwargs)
            return emulator._rotate_secret(self, *args, **kwargs)

        def update_secret_version_stage(
            self: Any,
            secret_id: str,
            version_stage: str,
            remove_from_version_id: str,
            move_to_version_id: str,
        ) -> Any:
            result = original_stage(
                self, secret_id, version_stage, remove_from_version_id, move_to_version_id
            )
            if _active() is not None and version_stage == "AWSCURRENT" and move_to_version_id:
                self.secrets[secret_id].default_version_id = move_to_version_id
            return result

        def list_secret_version_ids(self: Any, secret_id: str) -> Any:
            if _active() is None:
                return original_versions(self, secret_id)
            secret = self.secrets[secret_id]
            return json.dumps(
                {
                    "ARN": secret.arn,
                    "Name": secret.name,
                    "Versions": [
                        {
                            "VersionId": version_id,
                            "VersionStages": version["version_stages"],
                            "CreatedDate": version["createdate"],
                        }
                        for version_id, version in secret.versions.items()
                    ],
                }
            )

        def to_dict(self: Any) -> dict[str, Any]:
            result: dict[str, Any] = original_to_dict(self)
            rules = getattr(self, "keyrotor_rotation_rules", None)
            if _active() is not None and rules is not None:
                result["RotationEnabled"] = self.rotation_enabled
                result["RotationRules"] = dict(rules)
                result["NextRotationDate"] = (
                    self.next_rotation_date if self.rotation_enabled else None
                )
                result["LastRotatedDate"] = self.last_rotation_date
            return result

        from moto.iam import exceptions as iam_exceptions
        from moto.iam import models as iam_models
        from moto.iam.responses import IamResponse

        original_generate = IamResponse.generate_credential_report
        original_get = IamResponse.get_credential_report

        def generate_credential_report(self: Any) -> Any:
            emulator = _active()
            if emulator is None:
                return original_generate(self)
            return emulator._generate_credential_report(self.backend)

        def get_credential_report(self: Any) -> Any:
            emulator = _active()
            if emulator is None:
                return original_get(self)
            return emulator._get_credential_report(self.backend)

        original_create_key = iam_models.IAMBackend.create_access_key

        def create_access_key(self: Any, *args: Any, **kwargs: Any) -> Any:
            key = original_create_key(self, *args, **kwargs)
            if _active() is not None:
                key.create_date = key.create_date.replace(microsecond=0)
            return key

        # Fix 14: user names are not distinguished by case.
        original_create_user = iam_models.IAMBackend.create_user
        original_get_user = iam_models.IAMBackend.get_user
        original_delete_user = iam_models.IAMBackend.delete_user

        def create_user(self: Any, region_name: str, user_name: str, *args: Any, **kw: Any) -> Any:
            if _active() is not None:
                existing = _user_name_as_created(self, user_name)
                if existing is not None:
                    raise iam_exceptions.EntityAlreadyExists(
                        f"User with name {user_name} already exists."
                    )
            return original_create_user(self, region_name, user_name, *args, **kw)

        def get_user(self: Any, name: str) -> Any:
            if _active() is not None:
                name = _user_name_as_created(self, name) or name
            return original_get_user(self, name)

        def delete_user(self: Any, user_name: str) -> None:
            if _active() is not None:
                user_name = _user_name_as_created(self, user_name) or user_name
            original_delete_user(self, user_name)

        setattr(iam_models.IAMBackend, "create_user", create_user)  # noqa: B010
        setattr(iam_models.IAMBackend, "get_user", get_user)  # noqa: B010
        setattr(iam_models.IAMBackend, "delete_user", delete_user)  # noqa: B010
        setattr(iam_models.IAMBackend, "create_access_key", create_access_key)  # noqa: B010

        from moto.iam.models import IAMBackend

        original_create_role = IAMBackend.create_role

        def create_role(
            self: Any,
            role_name: str,
            assume: str,
            path: str,
            boundary: Any,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            # Fix 12: a permissions boundary must be an existing policy, as in IAM.
            known = {p.arn for p in self.managed_policies.values()}
            if _active() is not None and boundary and boundary not in known:
                from moto.iam.exceptions import NotFoundException

                raise NotFoundException(f"Policy {boundary} does not exist or is not attachable.")
            return original_create_role(self, role_name, assume, path, boundary, *args, **kwargs)

        # Fix 15: DescribeConnection answers the authorization's names, never its secrets.
        from moto.events import models as events_models

        original_describe_connection = events_models.Connection.describe

        def describe_connection(self: Any) -> dict[str, Any]:
            result: dict[str, Any] = original_describe_connection(self)
            if _active() is not None:
                result["AuthParameters"] = _without_connection_secrets(self.auth_parameters)
            return result

        setattr(events_models.Connection, "describe", describe_connection)  # noqa: B010
        setattr(IAMBackend, "create_role", create_role)  # noqa: B010
        setattr(IamResponse, "generate_credential_report", generate_credential_report)  # noqa: B010
        setattr(IamResponse, "get_credential_report", get_credential_report)  # noqa: B010
        setattr(backend_cls, "rotate_secret", rotate_secret)  # noqa: B010
        setattr(backend_cls, "update_secret_version_stage", update_secret_version_stage)  # noqa: B010
        setattr(backend_cls, "list_secret_version_ids", list_secret_version_ids)  # noqa: B010
        setattr(sm.FakeSecret, "to_dict", to_dict)  # noqa: B010
        _patched = True


def _user_name_as_created(backend: Any, name: str) -> str | None:
    """The existing user's name that equals ``name`` but for case (fix 14); None if none."""
    if name in backend.users:
        return name
    folded = name.lower()
    return next((user for user in backend.users if user.lower() == folded), None)


# --- rotation rules ------------------------------------------------------------------------------

_RATE = re.compile(r"^rate\((\d+) (hour|hours|day|days)\)$")


def rotation_interval(rules: Mapping[str, Any]) -> timedelta | None:
    """The interval of rate() / AutomaticallyAfterDays rules; None for cron() schedules."""
    expression = rules.get("ScheduleExpression")
    if expression:
        match = _RATE.match(str(expression).strip())
        if match is None:
            return None
        amount, unit = int(match.group(1)), match.group(2)
        return timedelta(hours=amount) if unit.startswith("hour") else timedelta(days=amount)
    days = rules.get("AutomaticallyAfterDays")
    return timedelta(days=int(days)) if days else None


def _validate_rules(rules: Mapping[str, Any]) -> None:
    from moto.secretsmanager.exceptions import InvalidParameterException

    expression = rules.get("ScheduleExpression")
    days = rules.get("AutomaticallyAfterDays")
    if expression and days:
        raise InvalidParameterException(
            "You can't specify both AutomaticallyAfterDays and ScheduleExpression."
        )
    if days is not None and not 1 <= int(days) <= 1000:
        raise InvalidParameterException(
            "RotationRules.AutomaticallyAfterDays must be within 1-1000."
        )
    if expression:
        text = str(expression).strip()
        if not (_RATE.match(text) or (text.startswith("cron(") and text.endswith(")"))):
            raise InvalidParameterException(f"Invalid ScheduleExpression: {text}")
        rate = _RATE.match(text)
        if rate and rotation_interval(rules) is not None:
            interval = rotation_interval(rules)
            if interval is not None and not timedelta(hours=4) <= interval <= timedelta(days=1000):
                raise InvalidParameterException(
                    "The rotation interval must be between 4 hours and 1000 days."
                )


# --- the credential report (fix 9) ---------------------------------------------------------------

CREDENTIAL_REPORT_REGENERATION = timedelta(hours=4)
CREDENTIAL_REPORT_COLUMNS = [
    "user",
    "arn",
    "user_creation_time",
    "password_enabled",
    "password_last_used",
    "password_last_changed",
    "password_next_rotation",
    "mfa_active",
    "access_key_1_active",
    "access_key_1_last_rotated",
    "access_key_1_last_used_date",
    "access_key_1_last_used_region",
    "access_key_1_last_used_service",
    "access_key_2_active",
    "access_key_2_last_rotated",
    "access_key_2_last_used_date",
    "access_key_2_last_used_region",
    "access_key_2_last_used_service",
    "cert_1_active",
    "cert_1_last_rotated",
    "cert_2_active",
    "cert_2_last_rotated",
]


@dataclass
class _CredentialReport:
    generated: datetime
    ready: datetime
    content: str


def _pass_role(role_arn: object, service: str) -> Request:
    """The iam:PassRole a call implies when it hands a role to ``service`` (a Lambda function's
    role, an EventBridge target's)."""
    return Request("iam:PassRole", str(role_arn), {"iam:PassedToService": service})


def _naive_utc(moment: datetime) -> datetime:
    """moto keeps IAM times as naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _report_time(moment: datetime | None) -> str:
    if moment is None:
        return "N/A"
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _key_columns(key: Any) -> list[str]:
    if key is None:
        return ["false", "N/A", "N/A", "N/A", "N/A"]
    used = key.last_used
    when = getattr(used, "timestamp", used)  # AccessKeyLastUsed, or a datetime set by hand
    return [
        _flag(key.status == "Active"),
        _report_time(key.create_date),
        _report_time(when),
        (getattr(used, "region", None) or "N/A") if used else "N/A",
        (getattr(used, "service", None) or "N/A") if used else "N/A",
    ]


def _credential_report_csv(backend: Any, account_created: datetime) -> str:
    """The report as AWS writes it, as of now: the root user first, then every user."""
    lines = [CREDENTIAL_REPORT_COLUMNS]
    lines.append(
        [
            "<root_account>",
            f"arn:aws:iam::{backend.account_id}:root",
            _report_time(account_created),
            "not_supported",
            "no_information",
            "not_supported",
            "not_supported",
            "false",
            *_key_columns(None),
            *_key_columns(None),
            "false",
            "N/A",
            "false",
            "N/A",
        ]
    )
    for user in list(backend.users.values()):
        keys = [*user.access_keys[:2], None, None][:2]
        certs = list(user.signing_certificates.values())[:2]
        password = bool(user.password)
        lines.append(
            [
                user.name,
                user.arn,
                _report_time(user.create_date),
                _flag(password),
                (
                    _report_time(user.password_last_used)
                    if user.password_last_used
                    else "no_information"
                )
                if password
                else "N/A",
                _report_time(user.create_date) if password else "N/A",
                "N/A",
                _flag(bool(user.mfa_devices)),
                *_key_columns(keys[0]),
                *_key_columns(keys[1]),
                _flag(len(certs) > 0 and certs[0].status == "Active"),
                "N/A",
                _flag(len(certs) > 1 and certs[1].status == "Active"),
                "N/A",
            ]
        )
    return "".join(",".join(line) + "\n" for line in lines)


# --- the WSGI layer ------------------------------------------------------------------------------

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")
_SIGNATURE = re.compile(r"Signature=([0-9a-f]+)")
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^,\s]+)")
_service_models: dict[str, Any] = {}
_rest_routes: dict[str, list[tuple[str, re.Pattern[str], int, str]]] = {}


def _service_model(service: str) -> Any:
    if service not in _service_models:
        _service_models[service] = botocore.session.get_session().get_service_model(service)
    return _service_models[service]


def _protocol(service: str) -> str:
    try:
        return str(_service_model(service).metadata.get("protocol", "json"))
    except Exception:
        return "json"


def _rest_operation(service: str, method: str, path: str) -> str:
    if service not in _rest_routes:
        routes = []
        model = _service_model(service)
        for name in model.operation_names:
            http = model.operation_model(name).http
            uri = http["requestUri"].split("?", 1)[0]
            pattern = re.sub(r"\\\{[^}]+?\\\+\\\}", ".+", re.escape(uri))
            pattern = re.sub(r"\\\{[^}]+?\\\}", "[^/]+", pattern)
            literal = len(re.sub(r"\{[^}]+\}", "", uri))
            routes.append((http["method"], re.compile(f"^{pattern}/?$"), literal, name))
        _rest_routes[service] = routes
    candidates = [
        (literal, name)
        for http_method, pattern, literal, name in _rest_routes[service]
        if http_method == method and pattern.match(path)
    ]
    return max(candidates)[1] if candidates else f"{method} {path}"


def _operation(service: str, environ: Mapping[str, Any], body: bytes) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return str(target).rsplit(".", 1)[-1]
    protocol = _protocol(service)
    if protocol in ("query", "ec2"):
        form = parse_qs(body.decode("utf-8", "replace")) if body else {}
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        action = (form.get("Action") or query.get("Action") or ["?"])[0]
        return action
    raw = str(environ.get("RAW_URI") or environ.get("PATH_INFO", "/"))
    return _rest_operation(service, str(environ.get("REQUEST_METHOD", "GET")), urlsplit(raw).path)


_ERROR_STATUS = {
    "AccessDenied": 403,
    "AccessDeniedException": 403,
    "InvalidClientTokenId": 403,
    "SignatureDoesNotMatch": 403,
    "ExpiredToken": 403,
    "TooManyRequestsException": 429,
    "InternalFailure": 500,
    "InternalServiceError": 500,
    "ServiceUnavailable": 503,
    "ServiceUnavailableException": 503,
}


def _error_code(service: str, error: str | None) -> str:
    protocol = _protocol(service)
    query = protocol in ("query", "ec2")
    if error in (None, "AccessDenied", "AccessDeniedException"):
        return "AccessDenied" if query else "AccessDeniedException"
    if error in ("Throttling", "ThrottlingException"):
        if query:
            return "Throttling"
        return "TooManyRequestsException" if protocol == "rest-json" else "ThrottlingException"
    return error


def _error_response(
    service: str, code: str, message: str
) -> tuple[str, list[tuple[str, str]], bytes]:
    status = _ERROR_STATUS.get(code, 400)
    status_line = f"{status} {'Forbidden' if status == 403 else 'Error'}"
    request_id = str(uuid.uuid4())
    protocol = _protocol(service)
    if protocol in ("query", "ec2"):
        version = _service_model(service).api_version
        body = (
            f'<ErrorResponse xmlns="https://{service}.amazonaws.com/doc/{version}/">'
            f"<Error><Type>Sender</Type><Code>{escape(code)}</Code>"
            f"<Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    elif protocol == "rest-json":
        body = json.dumps({"Type": "User", "message": message}).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("x-amzn-ErrorType", code),
            ("x-amzn-RequestId", request_id),
        ]
    else:
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-RequestId", request_id),
        ]
    headers.append(("Content-Length", str(len(body))))
    return status_line, headers, body


class _EmulatorApp:
    """The WSGI layer around moto's application: call log, authentication, faults, patches."""

    def __init__(self, emulator: AwsEmulator, app: Callable[..., Iterable[bytes]]) -> None:
        self._emulator = emulator
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        path = str(environ.get("PATH_INFO", ""))
        credential = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
        if path.startswith("/moto-api") or credential is None:
            return self._forward(environ, start_response)

        service = credential.group(4)
        operation = _operation(service, environ, body)
        step = environ.get("HTTP_" + STEP_HEADER.upper().replace("-", "_"))
        emulator = self._emulator
        emulator.calls.record(Call(service, operation, step))

        refusal, principal = emulator._authenticate(environ, body, credential)
        if refusal is not None:
            return self._reply(start_response, _error_response(service, *refusal))
        if principal is not None and principal in emulator.enforced:
            denied = emulator._authorize(principal, service, operation, environ, body)
            if denied is not None:
                code = _error_code(service, "AccessDenied")
                return self._reply(start_response, _error_response(service, code, denied))

        rule = emulator.faults._take("api", service, operation, step)
        message = f"keyrotor sandbox: injected fault in {operation}"
        if rule is not None and rule.when == "before":
            code = _error_code(service, rule.error)
            return self._reply(start_response, _error_response(service, code, message))

        if (service, operation) == ("sqs", "ReceiveMessage"):
            status, headers, content = self._long_poll(environ, body)
        else:
            status, headers, content = self._run(environ)
        if rule is not None:
            code = _error_code(service, rule.error)
            return self._reply(start_response, _error_response(service, code, message))
        if status.startswith("2"):
            emulator._after_write(service, operation, body, content, credential.group(1))
        return self._reply(start_response, (status, headers, content))

    def _long_poll(
        self, environ: dict[str, Any], body: bytes
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """ReceiveMessage with WaitTimeSeconds (fix 12): short receives until a message comes or
        the wait is over, the lock released in between (moto would wait holding it)."""
        try:
            request = json.loads(body or b"{}")
            wait = float(request.get("WaitTimeSeconds") or 0)
        except (ValueError, AttributeError):
            return self._run(environ)
        request["WaitTimeSeconds"] = 0
        data = json.dumps(request).encode()
        deadline = time.monotonic() + wait
        while True:
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(data), str(len(data))
            status, headers, content = self._run(environ)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not status.startswith("200") or b'"Messages"' in content:
                return status, headers, content
            with self._emulator._queue_activity:
                self._emulator._queue_activity.wait(min(remaining, 0.5))

    def _forward(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self._reply(start_response, self._run(environ))

    def _run(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return chunks.append

        with self._emulator._lock:
            _context.emulator = self._emulator
            try:
                result = self._app(environ, capture)
                try:
                    chunks.extend(result)
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
            finally:
                _context.emulator = None
        return captured["status"], list(captured["headers"]), b"".join(chunks)

    @staticmethod
    def _reply(
        start_response: Callable[..., Any], response: tuple[str, list[tuple[str, str]], bytes]
    ) -> list[bytes]:
        status, headers, content = response
        start_response(status, headers)
        return [content]


class _RequestHandler(MotoRequestHandler):
    def setup(self) -> None:
        super().setup()
        # Without this, a response written in two packets waits for the client's delayed ACK
        # (about 40 ms per call), which made every rotation take seconds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Server(ThreadedMotoServer):
    """moto's threaded server, with the emulator's WSGI layer around moto's application."""

    def __init__(self, emulator: AwsEmulator, port: int) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self._emulator = emulator

    def _server_entry(self) -> None:
        app = _EmulatorApp(self._emulator, DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=_RequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


# --- the emulator --------------------------------------------------------------------------------


class AwsEmulator:
    """moto's threaded server on loopback, made to behave like AWS where our tests depend on it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    region = REGION
    account_id = ACCOUNT_ID

    def __init__(
        self,
        port: int = 0,
        *,
        lambda_retries: int = LAMBDA_RETRIES,
        fast_test_backoff: bool = True,
    ) -> None:
        self._port = port
        self._server: _Server | None = None
        self._lambda_retries = lambda_retries
        self._fast_test_backoff = fast_test_backoff
        # moto's backends are not thread-safe: requests and rotations take turns.
        self._lock = threading.RLock()
        self._rotations_changed = threading.Condition()
        self._running: set[threading.Thread] = set()
        self._botocore_session = botocore.session.get_session()
        self._client_lock = threading.Lock()
        self.calls = CallLog()
        self.faults = Faults()
        self.rotations: list[Rotation] = []
        self.endpoint_url = ""
        # Seconds between finishSecret (AWSCURRENT moved) and LastRotatedDate being recorded.
        self.record_rotation_delay = 0.0
        # IAM authorization (fix 13): the principals it is evaluated for, and what it refused.
        self.enforced: set[str] = set()
        self.denials: list[Denial] = []
        self._role_keys: dict[str, tuple[str, str]] = {}  # access key id -> (role ARN, secret)
        # Seconds a credential report takes to generate (INPROGRESS meanwhile); fix 9.
        self.credential_report_seconds = 0.0
        self._credential_reports: dict[str, _CredentialReport] = {}
        # Fix 12: Secrets Manager's events onto moto's default event bus (False: lost).
        self.drop_events = False
        self.emitted_events: list[tuple[str, str, str]] = []  # (detail-type, eventName, secret)
        self.dropped_events: list[tuple[str, str, str]] = []
        # Fix 15: every request made to an API destination: (endpoint, HTTP status; 0: none).
        self.pushes: list[tuple[str, int]] = []
        self._queue_activity = threading.Condition()
        self._started_at = datetime.now(UTC)

    # lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        installed = importlib.metadata.version("moto")
        if installed != MOTO_VERSION:
            logger.warning(
                "moto %s is installed; the emulator's fixes were written against moto %s "
                "(pip install -e ./sandbox installs it)",
                installed,
                MOTO_VERSION,
            )
        _install_moto_patches()
        if self._fast_test_backoff:
            for name, value in _FAST_TEST_BACKOFF.items():
                os.environ.setdefault(name, value)
        self._server = _Server(self, self._port)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        logger.info("AWS emulator listening on %s", self.endpoint_url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            self.wait_for_rotations(timeout=30)
        except TimeoutError:
            logger.warning("AWS emulator stopped with rotations still running")
        self._server.stop()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # conveniences

    def environ(self) -> dict[str, str]:
        """Environment for a process (e.g. ``keyrotor run``) that should talk to the emulator."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ROOT_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": ROOT_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client pointed at the emulator (root credentials unless given)."""
        kwargs.setdefault("aws_access_key_id", ROOT_ACCESS_KEY_ID)
        kwargs.setdefault("aws_secret_access_key", ROOT_SECRET_ACCESS_KEY)
        kwargs.setdefault("region_name", self.region)
        kwargs.setdefault("endpoint_url", self.endpoint_url)
        # One botocore session for all clients: a fresh one re-reads the service models (slow).
        # Sessions are not thread-safe, clients are: creation takes turns.
        with self._client_lock:
            return self._botocore_session.create_client(service, **kwargs)

    def create_iam_user(self, name: str, tags: Mapping[str, str] | None = None) -> str:
        """Create an IAM user (with tags) and return its ARN."""
        response = self.client("iam").create_user(
            UserName=name, Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()]
        )
        return str(response["User"]["Arn"])

    def wait_for_rotations(self, timeout: float = 60.0) -> None:
        """Wait until no rotation is running; TimeoutError if one still is after ``timeout``."""
        with self._rotations_changed:
            if not self._rotations_changed.wait_for(lambda: not self._running, timeout):
                raise TimeoutError(f"{len(self._running)} rotation(s) still running")

    def rotations_of(self, secret_arn: str) -> list[Rotation]:
        with self._lock:
            return [r for r in self.rotations if r.secret_arn == secret_arn]

    def run_due_rotations(self, now: datetime) -> list[str]:
        """Start, as AWS's scheduler would, the rotation of every secret due at ``now``.

        Returns the ARNs of the secrets whose rotation started.
        """
        from moto.secretsmanager.models import FakeSecret, secretsmanager_backends

        started = []
        with self._lock:
            backend = secretsmanager_backends[self.account_id][self.region]
            for secret in list(backend.secrets.values()):
                if not isinstance(secret, FakeSecret) or secret.is_deleted():
                    continue
                due = secret.next_rotation_date
                if not (secret.rotation_enabled and secret.rotation_lambda_arn and due):
                    continue
                if due > now.timestamp() or self._pending_elsewhere(secret):
                    continue
                self._start_rotation(
                    secret, str(uuid.uuid4()), secret.rotation_lambda_arn, scheduled=now
                )
                started.append(secret.arn)
        return started

    def enforce_iam(self, principal_arn: str) -> None:
        """Evaluate IAM policies (fix 13) for every request of this user or role."""
        with self._lock:
            self.enforced.add(principal_arn)

    def role_credentials(self, role_arn: str) -> tuple[str, str]:
        """Session credentials of a role, as Lambda (or STS) would hand them to its code."""
        with self._lock:
            for key_id, (arn, secret) in self._role_keys.items():
                if arn == role_arn:
                    return key_id, secret
            key_id = "ASIA" + uuid.uuid4().hex[:16].upper()
            secret = uuid.uuid4().hex + uuid.uuid4().hex
            self._role_keys[key_id] = (role_arn, secret)
            return key_id, secret

    def denials_of(self, principal_arn: str) -> list[Denial]:
        with self._lock:
            return [d for d in self.denials if d.principal == principal_arn]

    def reset(self) -> None:
        """An empty account: every service emptied (moto's /moto-api/reset), no credential
        report. Waits for running rotations first."""
        self.wait_for_rotations()
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")  # noqa: S310 (loopback)
        urllib.request.urlopen(request, timeout=30).close()  # noqa: S310 (loopback)
        with self._lock:
            self._credential_reports.clear()

    def age_access_key(
        self,
        access_key_id: str,
        *,
        created: datetime | None = None,
        last_used: datetime | None = None,
        service: str = "sts",
    ) -> None:
        """Date a key back (fix 10): its CreateDate and/or its last use (by ``service``)."""
        from moto.iam.models import AccessKeyLastUsed, iam_backends

        with self._lock:
            key = next(
                (
                    key
                    for account in list(iam_backends.values())
                    for key in list(account["aws"].access_keys.values())
                    if key.access_key_id == access_key_id
                ),
                None,
            )
            if key is None:
                raise KeyError(f"no access key {access_key_id}")
            if created is not None:
                key.create_date = _naive_utc(created)
            if last_used is not None:
                key.last_used = AccessKeyLastUsed(
                    timestamp=_naive_utc(last_used), service=service, region=self.region
                )

    def age_credential_report(self, by: timedelta, account_id: str = ACCOUNT_ID) -> None:
        """Date the account's credential report back by ``by`` (fix 9)."""
        with self._lock:
            report = self._credential_reports.get(account_id)
            if report is None:
                raise KeyError(f"account {account_id} has no credential report")
            report.generated -= by
            report.ready -= by

    # internals: the credential report (fix 9)

    def _generate_credential_report(self, backend: Any) -> Any:
        from moto.core.responses import ActionResult

        now = datetime.now(UTC)
        report = self._credential_reports.get(backend.account_id)
        if report is not None and now < report.ready:
            return ActionResult({"State": "INPROGRESS"})
        if report is not None and now - report.generated <= CREDENTIAL_REPORT_REGENERATION:
            return ActionResult({"State": "COMPLETE"})
        self._credential_reports[backend.account_id] = _CredentialReport(
            generated=now,
            ready=now + timedelta(seconds=self.credential_report_seconds),
            content=_credential_report_csv(backend, self._started_at),
        )
        return ActionResult(
            {
                "State": "STARTED",
                "Description": "No report exists. Starting a new report generation task",
            }
        )

    def _get_credential_report(self, backend: Any) -> Any:
        from moto.core.responses import ActionResult
        from moto.iam.exceptions import IAMException, ReportNotPresentException

        report = self._credential_reports.get(backend.account_id)
        if report is None:
            raise ReportNotPresentException("Credential report not present")
        if datetime.now(UTC) < report.ready:

            class ReportInProgress(IAMException):
                code = "ReportInProgress"

            raise ReportInProgress("The credential report is still being generated.")
        return ActionResult(
            {
                "Content": report.content,
                "ReportFormat": "text/csv",
                "GeneratedTime": report.generated.replace(microsecond=0),
            }
        )

    # internals: authorization (fix 13)

    def _authorize(
        self, principal: str, service: str, operation: str, environ: Mapping[str, Any], body: bytes
    ) -> str | None:
        """None when the principal's policies allow the request, else AWS's refusal message."""
        if service == "sts":
            return None  # GetCallerIdentity needs no permission; nothing else is called
        with self._lock:
            requests = self._authorization_requests(principal, service, operation, environ, body)
            policies, boundary = self._principal_policies(principal)
        for request in requests:
            if is_allowed(policies, request, boundary):
                continue
            denial = Denial(principal, request.action, request.resource, dict(request.context))
            with self._lock:
                self.denials.append(denial)
            kind = "user" if ":user/" in principal else "role"
            logger.warning("IAM authorization refused %s", denial)
            return (
                f"User: {principal} is not authorized to perform: {request.action} on resource: "
                f"{request.resource} because no identity-based policy allows the "
                f"{request.action} action"
                + (" (or the role's permissions boundary does not)" if kind == "role" else "")
            )
        return None

    def _principal_policies(self, principal: str) -> tuple[list[Any], Any]:
        from moto.iam.models import iam_backends

        iam = iam_backends[self.account_id]["aws"]
        name = principal.rsplit("/", 1)[-1]
        boundary: Any = None
        if ":user/" in principal:
            entity: Any = iam.users.get(name)
        else:
            try:
                entity = iam.get_role(name)
            except Exception:
                entity = None
            if entity is not None and entity.permissions_boundary_arn:
                boundary = self._managed_document(entity.permissions_boundary_arn) or {
                    "Statement": []
                }
        if entity is None:
            return [], None
        documents = [iam_authz.load(d) for d in entity.policies.values()]
        for policy in entity.managed_policies.values():
            documents.append(self._managed_document(policy.arn) or {"Statement": []})
        return documents, boundary

    def _managed_document(self, arn: str) -> Any:
        from moto.iam.models import iam_backends

        iam = iam_backends[self.account_id]["aws"]
        policy = next((p for p in iam.managed_policies.values() if p.arn == arn), None)
        if policy is None:
            return None
        for version in policy.versions:
            if version.version_id == policy.default_version_id:
                return iam_authz.load(version.document)
        return None

    def _authorization_requests(
        self, principal: str, service: str, operation: str, environ: Mapping[str, Any], body: bytes
    ) -> list[Request]:
        protocol = _protocol(service)
        if protocol in ("query", "ec2"):
            form = parse_qs(body.decode("utf-8", "replace")) if body else {}
            params: dict[str, Any] = {k: v[0] for k, v in form.items()}
        else:
            try:
                params = json.loads(body) if body else {}
            except ValueError:
                params = {}
        action = f"{service}:{operation}"
        if service == "secretsmanager":
            return self._secrets_requests(action, operation, params)
        if service == "lambda":
            path = unquote(
                urlsplit(str(environ.get("RAW_URI") or environ.get("PATH_INFO", ""))).path
            )
            return self._lambda_requests(action, operation, params, path)
        if service == "iam":
            return self._iam_requests(principal, action, operation, params)
        if service == "events":
            return self._events_requests(action, operation, params)
        if service == "sqs":
            queue = (
                str(params.get("QueueName") or "")
                or str(params.get("QueueUrl") or "").rstrip("/").rsplit("/", 1)[-1]
            )
            if queue:
                return [Request(action, f"arn:aws:sqs:{self.region}:{self.account_id}:{queue}")]
        return [Request(action, "*")]

    def _events_requests(
        self, action: str, operation: str, params: Mapping[str, Any]
    ) -> list[Request]:
        """A rule, connection or API destination by the name the request gives (a connection's
        and a destination's ARN end in ``/<uuid>``, known once created); CreateApiDestination
        also on its connection; PutTargets with a RoleArn also ``iam:PassRole`` of that role to
        ``events.amazonaws.com``."""
        prefix = f"arn:aws:events:{self.region}:{self.account_id}"
        name = str(params.get("Name") or params.get("Rule") or "")
        if not name:
            return [Request(action, "*")]
        if operation.endswith("Connection"):
            return [
                Request(
                    action, self._events_arn("connections", name, f"{prefix}:connection/{name}")
                )
            ]
        if operation.endswith("ApiDestination"):
            requests = [
                Request(
                    action,
                    self._events_arn("destinations", name, f"{prefix}:api-destination/{name}"),
                )
            ]
            if operation == "CreateApiDestination" and params.get("ConnectionArn"):
                requests.append(Request(action, str(params["ConnectionArn"])))
            return requests
        bus = str(params.get("EventBusName") or "default")
        rule = f"rule/{name}" if bus == "default" else f"rule/{bus}/{name}"
        requests = [Request(action, f"{prefix}:{rule}")]
        for target in params.get("Targets") or [] if operation == "PutTargets" else []:
            if isinstance(target, Mapping) and target.get("RoleArn"):
                requests.append(_pass_role(target["RoleArn"], "events.amazonaws.com"))
        return requests

    def _events_arn(self, kind: str, name: str, before_creation: str) -> str:
        from moto.events.models import events_backends

        found = getattr(events_backends[self.account_id][self.region], kind).get(name)
        return str(found.arn) if found is not None else before_creation

    @staticmethod
    def _tag_context(tags: Iterable[Mapping[str, str]]) -> dict[str, Any]:
        tags = list(tags)
        context: dict[str, Any] = {f"aws:RequestTag/{t['Key']}": t["Value"] for t in tags}
        context["aws:TagKeys"] = [t["Key"] for t in tags]
        return context

    def _secrets_requests(
        self, action: str, operation: str, params: Mapping[str, Any]
    ) -> list[Request]:
        from moto.secretsmanager.models import secretsmanager_backends

        if operation in ("ListSecrets", "BatchGetSecretValue", "GetRandomPassword"):
            return [Request(action, "*")]
        backend = secretsmanager_backends[self.account_id][self.region]
        secret_id = str(params.get("SecretId") or params.get("Name") or "")
        # moto's SecretsStore resolves an ARN in `in` and `[]`, not in `get`.
        secret = backend.secrets[secret_id] if secret_id in backend.secrets else None  # noqa: SIM401
        arn = (
            secret.arn
            if secret is not None
            else f"arn:aws:secretsmanager:{self.region}:{self.account_id}:secret:{secret_id}-AbCdEf"
        )
        context: dict[str, Any] = {}
        for tag in (getattr(secret, "tags", None) or []) if secret is not None else []:
            context[f"aws:ResourceTag/{tag['Key']}"] = tag["Value"]
            context[f"secretsmanager:ResourceTag/{tag['Key']}"] = tag["Value"]
        if operation == "TagResource" or (operation == "CreateSecret" and params.get("Tags")):
            context.update(self._tag_context(params.get("Tags") or []))
        if operation == "UntagResource":
            context["aws:TagKeys"] = list(params.get("TagKeys") or [])
        for param, key in (
            ("KmsKeyId", "secretsmanager:KmsKeyId"),
            ("RotationLambdaARN", "secretsmanager:RotationLambdaARN"),
            ("VersionStage", "secretsmanager:VersionStage"),
        ):
            if params.get(param):
                context[key] = str(params[param])
        if "ForceDeleteWithoutRecovery" in params:
            context["secretsmanager:ForceDeleteWithoutRecovery"] = str(
                bool(params["ForceDeleteWithoutRecovery"])
            ).lower()
        requests = [Request(action, arn, context)]
        if operation == "CreateSecret" and params.get("Tags"):
            requests.append(Request("secretsmanager:TagResource", arn, context))
        return requests

    def _lambda_requests(
        self, action: str, operation: str, params: Mapping[str, Any], path: str
    ) -> list[Request]:
        match = re.search(r"/functions/([^/]+)", path)
        name = match.group(1) if match else str(params.get("FunctionName") or "")
        if operation == "TagResource":
            tagged = re.search(r"/tags/(.+)$", path)
            name = tagged.group(1) if tagged else name
        arn = (
            name.split(":qualifier")[0]
            if name.startswith("arn:")
            else f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"
        )
        context: dict[str, Any] = {}
        if operation == "AddPermission" and params.get("Principal"):
            context["lambda:Principal"] = str(params["Principal"])
        if params.get("Tags"):
            context.update(
                self._tag_context({"Key": k, "Value": v} for k, v in dict(params["Tags"]).items())
            )
        requests = [Request(action, arn, context)]
        if operation == "CreateFunction" and params.get("Tags"):
            requests.append(Request("lambda:TagResource", arn, context))
        if operation in ("CreateFunction", "UpdateFunctionConfiguration") and params.get("Role"):
            requests.append(_pass_role(params["Role"], "lambda.amazonaws.com"))
        return requests

    def _iam_requests(
        self, principal: str, action: str, operation: str, params: Mapping[str, Any]
    ) -> list[Request]:
        from moto.iam.models import iam_backends

        iam = iam_backends[self.account_id]["aws"]
        context: dict[str, Any] = {}
        tags = [
            {
                "Key": params[f"Tags.member.{n}.Key"],
                "Value": params.get(f"Tags.member.{n}.Value", ""),
            }
            for n in range(1, 51)
            if f"Tags.member.{n}.Key" in params
        ]
        if tags:
            context.update(self._tag_context(tags))
        tag_keys = [
            params[f"TagKeys.member.{n}"] for n in range(1, 51) if f"TagKeys.member.{n}" in params
        ]
        if tag_keys:
            context["aws:TagKeys"] = tag_keys
        if "UserName" in params or operation == "GetUser":
            name = str(params.get("UserName") or principal.rsplit("/", 1)[-1])
            name = _user_name_as_created(iam, name) or name  # fix 14: any spelling, one user
            user = iam.users.get(name)
            path = user.path if user is not None else "/"
            for tag in (user.tags or []) if user is not None else []:
                context[f"iam:ResourceTag/{tag['Key']}"] = tag["Value"]
                context[f"aws:ResourceTag/{tag['Key']}"] = tag["Value"]
            return [Request(action, f"arn:aws:iam::{self.account_id}:user{path}{name}", context)]
        if "RoleName" in params:
            name = str(params["RoleName"])
            try:
                role: Any = iam.get_role(name)
            except Exception:
                role = None
            path = role.path if role is not None else str(params.get("Path") or "/")
            arn = f"arn:aws:iam::{self.account_id}:role{path}{name}"
            if operation == "CreateRole" and params.get("PermissionsBoundary"):
                context["iam:PermissionsBoundary"] = str(params["PermissionsBoundary"])
            elif role is not None and role.permissions_boundary_arn:
                context["iam:PermissionsBoundary"] = role.permissions_boundary_arn
            requests = [Request(action, arn, context)]
            if operation == "CreateRole" and tags:
                requests.append(Request("iam:TagRole", arn, context))
            return requests
        return [Request(action, "*", context)]

    # internals: authentication

    def _authenticate(
        self, environ: Mapping[str, Any], body: bytes, credential: re.Match[str]
    ) -> tuple[tuple[str, str] | None, str | None]:
        """(None, principal ARN or None for the administrator) when the request may proceed,
        else ((error code, message), None)."""
        key_id, _, region, service = credential.groups()
        if key_id == ROOT_ACCESS_KEY_ID:
            return None, None
        from moto.iam.models import iam_backends

        with self._lock:
            found = None
            principal = None
            session = self._role_keys.get(key_id)
            if session is not None:
                principal, secret = session
            else:
                for account in list(iam_backends.keys()):
                    iam = iam_backends[account]["aws"]
                    for user in list(iam.users.values()):
                        for key in user.access_keys:
                            if key.access_key_id == key_id:
                                found, principal = key, user.arn
        if session is None and (found is None or found.status != "Active"):
            return (
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            ), None
        if session is not None:
            secret = session[1]
        else:
            assert found is not None
            secret = found.secret_access_key
        if not self._signature_matches(environ, body, secret, region, service):
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.",
            ), None
        return None, principal

    @staticmethod
    def _signature_matches(
        environ: Mapping[str, Any], body: bytes, secret: str, region: str, service: str
    ) -> bool:
        authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
        signature = _SIGNATURE.search(authorization)
        signed = _SIGNED_HEADERS.search(authorization)
        key_id = _CREDENTIAL.search(authorization)
        if signature is None or signed is None or key_id is None:
            return False
        headers = {}
        for name in signed.group(1).split(";"):
            if name == "content-type":
                value = environ.get("CONTENT_TYPE")
            elif name == "content-length":
                value = environ.get("CONTENT_LENGTH")
            else:
                value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if value is None:
                return False
            headers[name] = str(value)
        raw_uri = str(environ.get("RAW_URI") or environ.get("PATH_INFO", "/"))
        if "?" not in raw_uri and environ.get("QUERY_STRING"):
            raw_uri += "?" + str(environ["QUERY_STRING"])
        request = AWSRequest(
            method=str(environ.get("REQUEST_METHOD", "GET")),
            url=f"http://{headers.get('host', '127.0.0.1')}{raw_uri}",
            data=body,
            headers=headers,
        )
        request.context["timestamp"] = headers.get("x-amz-date", "")
        auth = SigV4Auth(Credentials(key_id.group(1), secret), service, region)
        canonical = auth.canonical_request(request)
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        return bool(expected == signature.group(1))

    # internals: Secrets Manager's events (fix 12)

    def _after_write(
        self, service: str, operation: str, body: bytes, content: bytes, caller: str
    ) -> None:
        if service == "sqs" and operation.startswith("SendMessage"):
            self._notify_queues()
        if service != "secretsmanager" or operation not in cloudtrail.WRITE_OPERATIONS:
            return
        try:
            request, response = json.loads(body or b"{}"), json.loads(content or b"{}")
        except ValueError:
            return
        detail = cloudtrail.api_call(
            operation,
            request,
            response,
            account_id=self.account_id,
            region=self.region,
            caller=caller,
        )
        secret = str(response.get("ARN") or request.get("SecretId") or "")
        self._emit(cloudtrail.API_CALL, detail, secret)

    def _emit_service_event(self, name: str, secret_arn: str) -> None:
        detail = cloudtrail.service_event(
            name, secret_arn, account_id=self.account_id, region=self.region
        )
        self._emit(cloudtrail.SERVICE_EVENT, detail, secret_arn)

    def _emit(self, detail_type: str, detail: Mapping[str, Any], secret: str) -> None:
        """Put one event on moto's default bus: its rules deliver it (to SQS, among others)."""
        record = (detail_type, str(detail["eventName"]), secret)
        if self.drop_events:
            self.dropped_events.append(record)
            return
        with self._lock:
            self._deliver(detail_type, detail)
            self.emitted_events.append(record)
        self._notify_queues()

    def _deliver(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        """What EventBridge does with an event on the default bus: every enabled rule whose
        pattern matches sends it to its targets (moto's rules do the matching and sending; its
        PutEvents would also use disabled rules, stop at the first failing target and drop the
        event's account)."""
        from moto.events.models import events_backends

        bus = events_backends[self.account_id][self.region].event_buses.get("default")
        event = cloudtrail.event(
            detail_type, detail, account_id=self.account_id, region=self.region, at=time.time()
        )
        for rule in list(bus.rules.values()) if bus is not None else []:
            if rule.state != "ENABLED":
                continue
            transform = any("InputTransformer" in target for target in rule.targets)
            # moto's input templating reads ingestion-time; an untransformed event goes as is.
            message: Any = {**event, "ingestion-time": event["time"]} if transform else event
            # Fix 15: API destinations are the emulator's to call; moto's own targets the rest.
            every_target = rule.targets
            pushed = [t for t in every_target if ":api-destination/" in str(t.get("Arn", ""))]
            rule.targets = [t for t in every_target if t not in pushed]
            try:
                rule.send_to_targets(message, transform_input=transform)
            except Exception:  # a target gone: AWS drops that delivery, not the event
                logger.warning("rule %s did not deliver %s", rule.name, detail["eventName"])
            finally:
                rule.targets = every_target
            if pushed and rule.event_pattern.matches_event(event):  # type: ignore[arg-type]
                for target in pushed:
                    self._push_to_api_destination(target, event)

    def _push_to_api_destination(self, target: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        """What EventBridge does for an API destination target (fix 15): POST the event as JSON
        to the destination's endpoint with the connection's API key header, from a thread of
        its own (delivery is asynchronous); retry 401, 407, 409, 429, 5xx and no answer within
        5 s with exponential backoff, within the target's RetryPolicy. Called under the lock."""
        from moto.events.models import events_backends

        backend = events_backends[self.account_id][self.region]
        name = str(target["Arn"]).split(":api-destination/", 1)[1].split("/")[0]
        destination = backend.destinations.get(name)
        connection = next(
            (
                c
                for c in backend.connections.values()
                if destination is not None and c.arn == destination.connection_arn
            ),
            None,
        )
        if destination is None or connection is None:
            logger.warning("API destination %s or its connection is gone: event dropped", name)
            return
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Amazon/EventBridge/ApiDestinations",
        }
        api_key = (connection.auth_parameters or {}).get("ApiKeyAuthParameters") or {}
        if connection.authorization_type == "API_KEY" and api_key.get("ApiKeyName"):
            headers[str(api_key["ApiKeyName"])] = str(api_key.get("ApiKeyValue", ""))
        when = datetime.fromtimestamp(float(event["time"]), UTC)
        body = json.dumps({**event, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
        policy = target.get("RetryPolicy") or {}
        delivery = _Push(
            url=str(destination.invocation_endpoint),
            method=str(destination.http_method or "POST"),
            headers=headers,
            body=body,
            attempts=1 + int(policy.get("MaximumRetryAttempts", 185)),
            max_age=float(policy.get("MaximumEventAgeInSeconds", 86400)),
        )
        thread = threading.Thread(target=self._push, args=(delivery,), daemon=True)
        thread.start()

    def _push(self, delivery: _Push) -> None:
        started = time.monotonic()
        for attempt in range(delivery.attempts):
            request = urllib.request.Request(  # noqa: S310  (the destination's endpoint)
                delivery.url, data=delivery.body, headers=delivery.headers, method=delivery.method
            )
            try:
                with urllib.request.urlopen(request, timeout=PUSH_TIMEOUT) as response:  # noqa: S310
                    status = int(response.status)
            except urllib.error.HTTPError as error:
                status = int(error.code)
            except OSError:
                status = 0  # no answer (refused, timed out): retried
            with self._lock:
                self.pushes.append((delivery.url, status))
            if status not in PUSH_RETRIED and not 500 <= status <= 599 and status != 0:
                return
            wait = min(PUSH_BACKOFF * 2**attempt, PUSH_BACKOFF_CAP) * (0.5 + random.random() / 2)  # noqa: S311
            if (
                attempt + 1 >= delivery.attempts
                or time.monotonic() - started + wait > delivery.max_age
            ):
                logger.warning(
                    "API destination %s: event dropped after %d attempts", delivery.url, attempt + 1
                )
                return
            time.sleep(wait)

    def _notify_queues(self) -> None:
        with self._queue_activity:
            self._queue_activity.notify_all()

    # internals: rotation

    @staticmethod
    def _pending_elsewhere(secret: Any) -> bool:
        return any(
            "AWSPENDING" in v["version_stages"] and "AWSCURRENT" not in v["version_stages"]
            for v in secret.versions.values()
        )

    def _rotate_secret(
        self,
        backend: Any,
        secret_id: str,
        client_request_token: str | None = None,
        rotation_lambda_arn: str | None = None,
        rotation_rules: dict[str, Any] | None = None,
        rotate_immediately: bool = True,
    ) -> str:
        """RotateSecret as AWS does it (runs in the server thread, under the lock)."""
        from moto.awslambda.utils import get_backend
        from moto.secretsmanager.exceptions import (
            InvalidParameterException,
            InvalidRequestException,
            ResourceNotFoundException,
            SecretNotFoundException,
        )
        from moto.secretsmanager.models import ReplicaSecret

        if secret_id not in backend.secrets:
            raise SecretNotFoundException()
        secret = backend.secrets[secret_id]
        if isinstance(secret, ReplicaSecret):
            raise InvalidRequestException("You can't rotate a replica secret.")
        if secret.is_deleted():
            raise InvalidRequestException(
                "You can't perform this operation on the secret because it was marked for deletion."
            )
        lambda_arn = rotation_lambda_arn or secret.rotation_lambda_arn
        if not lambda_arn:
            raise InvalidRequestException(
                "No Lambda rotation function ARN is associated with this secret."
            )
        try:
            get_backend(backend.account_id, backend.region_name).get_function(lambda_arn)
        except Exception:
            raise ResourceNotFoundException(f"Resource not found for ARN '{lambda_arn}'.") from None
        if rotation_rules:
            _validate_rules(rotation_rules)
        if self._pending_elsewhere(secret):
            raise InvalidRequestException(PREVIOUS_ROTATION_INCOMPLETE)
        token = client_request_token or str(uuid.uuid4())
        if not 32 <= len(token) <= 64:
            raise InvalidParameterException("ClientRequestToken must be 32-64 characters long.")
        if token in secret.versions:
            raise InvalidRequestException(
                f"You can't use ClientRequestToken {token} because that value is already in use "
                f"for a version of secret {secret.arn}."
            )

        secret.rotation_lambda_arn = lambda_arn
        secret.rotation_requested = True
        secret.rotation_enabled = True
        if rotation_rules:
            secret.keyrotor_rotation_rules = dict(rotation_rules)
            secret.auto_rotate_after_days = int(rotation_rules.get("AutomaticallyAfterDays") or 0)
        elif getattr(secret, "keyrotor_rotation_rules", None) is None:
            secret.keyrotor_rotation_rules = {}
        self._schedule_next(secret, datetime.now(UTC))
        if not rotate_immediately:
            return json.dumps({"ARN": secret.arn, "Name": secret.name})
        self._start_rotation(secret, token, lambda_arn)
        return json.dumps({"ARN": secret.arn, "Name": secret.name, "VersionId": token})

    @staticmethod
    def _schedule_next(secret: Any, since: datetime) -> None:
        interval = rotation_interval(getattr(secret, "keyrotor_rotation_rules", None) or {})
        secret.next_rotation_date = int((since + interval).timestamp()) if interval else None

    def _start_rotation(
        self, secret: Any, token: str, lambda_arn: str, scheduled: datetime | None = None
    ) -> None:
        secret.versions[token] = {
            "createdate": int(time.time()),
            "version_id": token,
            "version_stages": ["AWSPENDING"],
        }
        started = datetime.now(UTC)
        rotation = Rotation(secret.arn, token, lambda_arn, started, scheduled or started)
        self.rotations.append(rotation)
        thread = threading.Thread(
            target=self._run_rotation,
            args=(rotation,),
            name=f"rotation-{token[:8]}",
            daemon=True,
        )
        with self._rotations_changed:
            self._running.add(thread)
        self._emit_service_event("RotationStarted", secret.arn)
        thread.start()

    def _run_rotation(self, rotation: Rotation) -> None:
        try:
            for step in ROTATION_STEPS:
                if not self._run_step(rotation, step):
                    rotation.succeeded, rotation.failed_step = False, step
                    logger.warning(
                        "rotation of %s (version %s) stopped: %s failed %d times",
                        rotation.secret_arn,
                        rotation.token,
                        step,
                        self._lambda_retries + 1,
                    )
                    self._emit_service_event("RotationFailed", rotation.secret_arn)
                    return
            rotation.succeeded = True
            if self.record_rotation_delay:
                time.sleep(self.record_rotation_delay)
            self._rotation_succeeded(rotation)
            self._emit_service_event("RotationSucceeded", rotation.secret_arn)
        except Exception:
            rotation.succeeded = False
            logger.exception("rotation of %s failed in the emulator", rotation.secret_arn)
        finally:
            rotation.finished = datetime.now(UTC)
            with self._rotations_changed:
                self._running.discard(threading.current_thread())
                self._rotations_changed.notify_all()

    def _rotation_succeeded(self, rotation: Rotation) -> None:
        from moto.secretsmanager.models import FakeSecret, secretsmanager_backends

        with self._lock:
            backend = secretsmanager_backends[self.account_id][self.region]
            secret = backend.secrets.get(rotation.secret_arn)
            if isinstance(secret, FakeSecret):
                secret.last_rotation_date = int(rotation.started.timestamp())
                self._schedule_next(secret, rotation.scheduled)

    def _run_step(self, rotation: Rotation, step: str) -> bool:
        event = {
            "Step": step,
            "SecretId": rotation.secret_arn,
            "ClientRequestToken": rotation.token,
        }
        for _attempt in range(self._lambda_retries + 1):
            try:
                self._invoke(rotation.lambda_arn, step, event)
                rotation.invocations.append((step, True))
                return True
            except Exception as error:
                # The handler never puts a secret value in an exception message.
                rotation.error = f"{type(error).__name__}: {error}"
                rotation.invocations.append((step, False))
                logger.info("%s of %s failed: %s", step, rotation.secret_arn, rotation.error)
        return False

    def _invoke(self, lambda_arn: str, step: str, event: dict[str, Any]) -> None:
        handler_module, handler_name, code = self._lambda_code(lambda_arn)
        crash = self.faults._take("lambda", "lambda", step, step)
        if crash is not None and crash.when == "before":
            raise InjectedLambdaCrash(f"keyrotor sandbox: injected crash before {step}")
        with tempfile.TemporaryDirectory(prefix="keyrotor-lambda-") as task_root:
            with zipfile.ZipFile(io.BytesIO(code)) as archive:
                archive.extractall(task_root)
            path = os.path.join(task_root, *handler_module.split(".")) + ".py"
            spec = importlib.util.spec_from_file_location(handler_module, path)
            if spec is None or spec.loader is None:
                raise RuntimeError(f"cannot load {handler_module} from the function's code")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        if hasattr(module, "boto3"):
            setattr(module, "boto3", _LambdaBoto3(self, step, self._lambda_role(lambda_arn)))  # noqa: B010
        getattr(module, handler_name)(event, _LambdaContext(lambda_arn))
        if crash is not None:
            raise InjectedLambdaCrash(f"keyrotor sandbox: injected crash after {step}")

    def _lambda_role(self, lambda_arn: str) -> str | None:
        from moto.awslambda.utils import get_backend

        with self._lock:
            function = get_backend(self.account_id, self.region).get_function(lambda_arn)
            return str(function.role) if getattr(function, "role", None) else None

    def _lambda_code(self, lambda_arn: str) -> tuple[str, str, bytes]:
        from moto.awslambda.utils import get_backend

        with self._lock:
            function = get_backend(self.account_id, self.region).get_function(lambda_arn)
            handler = str(function.handler)
            code = bytes(function.code_bytes)
        module, _, name = handler.rpartition(".")
        return module, name, code
