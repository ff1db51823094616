"""Secrets Manager rotation function for an IAM user's access key (shipped as lambda_function.py).

Standard library and boto3 only: the operator zips this file as it is (see
``keyrotor.aws.lambda_package``). The secret's value is JSON, compatible with the classic IAM-key
rotation function::

    {"username": "...", "accesskey": "AKIA...", "secretkey": "...", "masterarn": "arn:..."}

``accesskey``/``secretkey`` are absent or empty before the first rotation (the operator creates the
secret with only the user name); ``masterarn`` is optional. One field is added beside the key:
``"keycreated": {"accesskey": "AKIA...", "createdate": "2026-01-01T00:00:00Z"}``, the key's IAM
CreateDate (public, as the key id is), paired with the key id so that a function that copies the
other fields (the classic one) cannot pass the previous key's date off as the new key's.

Which credentials manage the user's keys:

* default: the Lambda's own execution role (boto3's default credential chain);
* classic layout: ``masterarn`` names a secret whose ``accesskey``/``secretkey`` are used for IAM;
  it may be this very secret (the user rotating itself), in which case its AWSCURRENT keys are used.
  Any other master secret must belong to the same installation: it carries the tag
  ``keyrotor.io/cluster`` with the same value as the rotated secret (tags the operator sets; this
  function's role cannot change tags); otherwise the step fails and the master's value is never
  read.

Safety rules, whatever step is retried and however often:

* before anything else (any IAM call, any write, any other secret read), createSecret and
  testSecret check that the secret's tag ``keyrotor.io/iam-user`` (written by the operator) names
  the user in the JSON ``username``; a secret without the tag, or with another user in its JSON,
  is refused: writing a secret value is not enough to have keys minted for another user.
  finishSecret only moves labels onto a version testSecret has vouched for;
* the key of the AWSCURRENT version is never deleted or deactivated;
* createSecret is idempotent per ClientRequestToken: a pending version that already holds a value
  is left as it is, and a key left behind by an earlier failed attempt of the same token is
  recognised (not current, created at or after the pending version) and deleted before a new one
  is made, so the user never holds an orphan and never hits the two-key limit because of us;
* at IAM's two-key limit createSecret removes only a key that cannot be in use: an inactive key,
  or this secret's own previous key (the one its AWSPREVIOUS version holds), or a key this secret
  made in an earlier rotation that stopped before finishSecret (held by a label-less version no
  older than AWSCURRENT's: it was never current, so never mirrored). Any other Active key
  (another secret's, a hand-made one) makes the step fail with :class:`KeyInUseError` naming the
  key id; nothing is deleted, and the rotation stops until someone deactivates or deletes it;
* a lost PutSecretValue response is told apart from a failed write by reading the pending version
  back: a stored key is kept (the step is done), an unstored one is deleted at once (or by the
  retry's orphan sweep when that cannot be known); a failed CreateAccessKey (whose key may exist
  although its answer was lost) is followed by the same orphan sweep at once, so that the last
  attempt leaves no key that a later rotation could not tell from a key in use;
* testSecret proves the pending key authenticates as the user (sts:GetCallerIdentity), with bounded
  exponential backoff while a new key propagates through IAM;
* finishSecret moves AWSCURRENT to the new version and leaves no AWSPENDING behind.

No secret access key and no secret JSON ever appears in a log line or an exception message: they
name the secret ARN, version ids, the user and public access key ids only.

Tuning (environment of the function): ``KEYROTOR_TEST_ATTEMPTS`` (default 8),
``KEYROTOR_TEST_BASE_DELAY_SECONDS`` (default 1), ``KEYROTOR_TEST_MAX_DELAY_SECONDS`` (default 10).
With the defaults testSecret waits at most about 45 seconds, so give the function a timeout of at
least a minute. ``AWS_ENDPOINT_URL`` is honoured by boto3 itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"
# The operator's tags on the secret (keyrotor.model.TAG_IAM_USER / TAG_CLUSTER; kept equal by a
# unit test, since this module imports nothing of the operator's).
TAG_IAM_USER = "keyrotor.io/iam-user"
TAG_CLUSTER = "keyrotor.io/cluster"
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
# Codes IAM/STS answer while a fresh key has not propagated yet (not AuthFailure, that is EC2).
_PROPAGATION_ERRORS = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch"})


class RotationError(ValueError):
    """The rotation cannot proceed with this input or state.

    The message names the secret ARN, the version, the user and public key ids, never a secret.
    """


class KeyInUseError(RotationError):
    """The user is at the two-key limit and the key that would have to go may be in use.

    The message starts with :data:`KEY_IN_USE_PREFIX` and names the Active key id(s) to deactivate
    or delete; the operator recognises the failure by the class name and that prefix.
    """


KEY_IN_USE_PREFIX = "refusing to delete access key"


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    secret_id, token, step = _parse_event(event)
    sm: SecretsManagerClient = boto3.client("secretsmanager")
    metadata = sm.describe_secret(SecretId=secret_id)
    arn = metadata["ARN"]
    if not metadata.get("RotationEnabled"):
        raise RotationError(f"rotation is not enabled for secret {arn}")
    stages = metadata.get("VersionIdsToStages", {}).get(token)
    if stages is None:
        raise RotationError(f"version {token} of secret {arn} does not exist")
    logger.info("%s: secret %s version %s (stages %s)", step, arn, token, sorted(stages))

    if step == "finishSecret":
        _finish_secret(sm, arn, token, metadata.get("VersionIdsToStages", {}))
        return
    if AWSCURRENT in stages:
        logger.info("%s: version %s of %s is already AWSCURRENT, nothing to do", step, token, arn)
        return
    if AWSPENDING not in stages:
        raise RotationError(f"version {token} of secret {arn} is not AWSPENDING for rotation")

    current = _read_json(sm, arn, VersionStage=AWSCURRENT)
    user = current.get("username")
    if not isinstance(user, str) or not user:
        raise RotationError(f"secret {arn} (AWSCURRENT) has no 'username'")
    _check_user_tag(metadata, user)
    if step == "createSecret":
        _create_secret(sm, arn, token, metadata, current, user)
    elif step == "setSecret":
        logger.info("setSecret: nothing to set for IAM user %s", user)
    else:
        _test_secret(sm, arn, token, metadata, current, user)


def _parse_event(event: Any) -> tuple[str, str, str]:
    if not isinstance(event, dict):
        raise RotationError("rotation event is not an object")
    secret_id, token, step = (event.get(k) for k in ("SecretId", "ClientRequestToken", "Step"))
    if not isinstance(secret_id, str) or not secret_id:
        raise RotationError("rotation event has no SecretId")
    if not isinstance(token, str) or not token:
        raise RotationError(f"rotation event for secret {secret_id} has no ClientRequestToken")
    if step not in STEPS:
        raise RotationError(f"unknown rotation step {step!r} for secret {secret_id}")
    return secret_id, token, step


def _read_json(sm: SecretsManagerClient, secret_id: str, **version: str) -> dict[str, Any]:
    response = sm.get_secret_value(SecretId=secret_id, **version)
    where = f"secret {response['ARN']} version {response['VersionId']}"
    try:
        value = json.loads(response.get("SecretString") or "")
    except ValueError:
        raise RotationError(f"{where} is not JSON") from None
    if not isinstance(value, dict):
        raise RotationError(f"{where} is not a JSON object")
    return value


def _tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value")) for t in metadata.get("Tags") or []}


def _check_user_tag(metadata: Mapping[str, Any], user: str) -> None:
    """The JSON ``username`` is the user the operator tagged the secret for, or nothing happens.
    IAM user names are not distinguished by case: ``Svc`` and ``svc`` are one user (the
    operator tags the secret with the name as IAM spells it, the value has the object's)."""
    tagged = _tags(metadata).get(TAG_IAM_USER)
    if tagged is None:
        raise RotationError(
            f"secret {metadata['ARN']} has no tag {TAG_IAM_USER}; refusing to manage keys of "
            f"IAM user {user} for it (keyrotor tags the secrets it manages)"
        )
    if tagged.lower() != user.lower():
        raise RotationError(
            f"secret {metadata['ARN']} is tagged {TAG_IAM_USER}={tagged} but its value names IAM "
            f"user {user}; refusing to manage keys of a user the secret was not made for"
        )


def _same_secret(ref: str, metadata: Mapping[str, Any]) -> bool:
    arn, name = str(metadata["ARN"]), str(metadata["Name"])
    return ref in (arn, name) or arn.startswith(ref + "-")  # a partial ARN (no random suffix)


def _iam_client(
    sm: SecretsManagerClient, metadata: Mapping[str, Any], current: dict[str, Any]
) -> IAMClient:
    master = current.get("masterarn")
    if not master:
        return boto3.client("iam")  # the Lambda's own role
    if not isinstance(master, str):
        raise RotationError(f"secret {metadata['ARN']} has a 'masterarn' that is not a string")
    if _same_secret(master, metadata):
        creds = current
    else:
        _check_same_installation(sm, master, metadata)
        creds = _read_json(sm, master, VersionStage=AWSCURRENT)
    access, secret = creds.get("accesskey"), creds.get("secretkey")
    if not isinstance(access, str) or not access or not isinstance(secret, str) or not secret:
        raise RotationError(f"master secret {master} holds no accesskey/secretkey")
    return boto3.client("iam", aws_access_key_id=access, aws_secret_access_key=secret)


def _check_same_installation(
    sm: SecretsManagerClient, master: str, metadata: Mapping[str, Any]
) -> None:
    """A master secret other than this one must carry this secret's installation tag."""
    arn = metadata["ARN"]
    cluster = _tags(metadata).get(TAG_CLUSTER)
    try:
        master_metadata = sm.describe_secret(SecretId=master)
    except ClientError as error:
        if _code(error) == "ResourceNotFoundException":
            raise RotationError(f"master secret {master} of secret {arn} does not exist") from None
        raise
    master_cluster = _tags(master_metadata).get(TAG_CLUSTER)
    if not cluster or master_cluster != cluster:
        raise RotationError(
            f"master secret {master_metadata['ARN']} of secret {arn} is not a secret of the same "
            f"keyrotor installation ({TAG_CLUSTER} is {master_cluster!r}, expected {cluster!r}); "
            "refusing to use its credentials"
        )


def _list_keys(iam: IAMClient, user: str, arn: str) -> list[dict[str, Any]]:
    try:
        return list(iam.list_access_keys(UserName=user)["AccessKeyMetadata"])  # type: ignore[arg-type]
    except ClientError as error:
        if _code(error) == "NoSuchEntity":
            raise RotationError(f"IAM user {user} of secret {arn} does not exist") from None
        raise


def _versions(sm: SecretsManagerClient, arn: str) -> list[dict[str, Any]]:
    """Every version of the secret, deprecated (label-less) ones included."""
    versions: list[dict[str, Any]] = []
    next_token = ""
    while True:
        page = (
            sm.list_secret_version_ids(SecretId=arn, IncludeDeprecated=True, NextToken=next_token)
            if next_token
            else sm.list_secret_version_ids(SecretId=arn, IncludeDeprecated=True)
        )
        versions.extend(dict(v) for v in page["Versions"])
        if not page.get("NextToken"):
            return versions
        next_token = page["NextToken"]


def _created(versions: list[dict[str, Any]], version_id: str) -> int | None:
    """A version's creation time in whole seconds, None when it is not listed."""
    for version in versions:
        if version.get("VersionId") == version_id and "CreatedDate" in version:
            return _seconds(version["CreatedDate"])
    return None


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def _create_secret(
    sm: SecretsManagerClient,
    arn: str,
    token: str,
    metadata: Mapping[str, Any],
    current: dict[str, Any],
    user: str,
) -> None:
    try:
        sm.get_secret_value(SecretId=arn, VersionId=token, VersionStage=AWSPENDING)
        logger.info("createSecret: version %s of %s already holds the new key", token, arn)
        return
    except ClientError as error:
        if _code(error) != "ResourceNotFoundException":
            raise

    iam = _iam_client(sm, metadata, current)
    current_key = current.get("accesskey") or None
    versions = _versions(sm, arn)
    pending_since = _created(versions, token)
    if pending_since is None:
        raise RotationError(f"version {token} of secret {arn} is not listed")
    keys = _sweep_orphans(iam, user, token, _list_keys(iam, user, arn), current_key, pending_since)
    if len(keys) >= 2:
        victim = _key_to_remove(sm, arn, token, user, keys, current_key, versions)
        logger.info("createSecret: deleting key %s of %s to make room", victim, user)
        iam.delete_access_key(UserName=user, AccessKeyId=victim)

    try:
        created = iam.create_access_key(UserName=user)["AccessKey"]
    except Exception:
        # The key may exist although its answer was lost: on the last attempt no retry's sweep
        # would find it, and the next rotation could not tell it from a key in use.
        _sweep_after_lost_create(iam, user, token, current_key, pending_since, arn)
        raise
    _store_pending(sm, iam, arn, token, user, current, created)


def _sweep_after_lost_create(
    iam: IAMClient, user: str, token: str, current_key: str | None, since: int, arn: str
) -> None:
    try:
        _sweep_orphans(iam, user, token, _list_keys(iam, user, arn), current_key, since)
    except Exception as error:  # best effort: the retry's sweep does the same
        logger.warning(
            "createSecret: could not look for a key made by a failed CreateAccessKey of %s: %s",
            user,
            _describe_error(error),
        )


def _sweep_orphans(
    iam: IAMClient,
    user: str,
    token: str,
    keys: list[dict[str, Any]],
    current_key: str | None,
    pending_since: int,
) -> list[dict[str, Any]]:
    """Delete the keys an earlier attempt of this same token made (its PutSecretValue failed or
    its answer was lost): not current and created no earlier than the pending version. IAM and
    Secrets Manager dates are compared at one-second precision, the coarser of the two. Returns
    the keys that are left."""
    left = []
    for key in keys:
        if key["AccessKeyId"] != current_key and _seconds(key["CreateDate"]) >= pending_since:
            logger.info(
                "createSecret: deleting key %s of %s left by an earlier attempt of %s",
                key["AccessKeyId"],
                user,
                token,
            )
            iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
        else:
            left.append(key)
    return left


def _store_pending(
    sm: SecretsManagerClient,
    iam: IAMClient,
    arn: str,
    token: str,
    user: str,
    current: dict[str, Any],
    created: Mapping[str, Any],
) -> None:
    """Store the new key under the token; a lost answer is told apart from a failed write."""
    new_id = created["AccessKeyId"]
    when = created["CreateDate"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = {"accesskey": new_id, "createdate": when}
    pending = dict(
        current, accesskey=new_id, secretkey=created["SecretAccessKey"], keycreated=stamp
    )
    try:
        sm.put_secret_value(
            SecretId=arn,
            ClientRequestToken=token,
            SecretString=json.dumps(pending),
            VersionStages=[AWSPENDING],
        )
    except Exception:
        stored = _pending_key_id(sm, arn, token)
        if stored == new_id:
            # The value was stored and only the answer was lost: the step is done.
            logger.info("createSecret: stored key %s for %s in version %s", new_id, user, token)
            return
        if stored is None:
            _discard_key(iam, user, new_id)
        # else unknown: keep the key; the retry's sweep deletes it if it was not stored
        raise
    logger.info("createSecret: stored key %s for %s in version %s", new_id, user, token)


def _key_to_remove(
    sm: SecretsManagerClient,
    arn: str,
    token: str,
    user: str,
    keys: list[dict[str, Any]],
    current_key: str | None,
    versions: list[dict[str, Any]],
) -> str:
    """The key that may go to make room, in this order: an inactive one; this secret's previous
    key (AWSPREVIOUS); a key this secret made in a rotation that failed and never became current.

    Never the AWSCURRENT key; any other Active key may be in use (another secret's, a hand-made
    one) and stops the rotation with :class:`KeyInUseError`.
    """
    others = {str(k["AccessKeyId"]): k for k in keys if k["AccessKeyId"] != current_key}
    inactive = sorted(key_id for key_id, k in others.items() if k.get("Status") != "Active")
    if inactive:
        return inactive[0]
    previous_key = _key_in(sm, arn, VersionStage=AWSPREVIOUS)
    if previous_key in others:
        return previous_key
    for version_id in _never_current(versions, token):
        failed_key = _key_in(sm, arn, VersionId=version_id)
        if failed_key in others:
            logger.info(
                "createSecret: key %s is held by version %s of %s, which never became AWSCURRENT",
                failed_key,
                version_id,
                arn,
            )
            return failed_key
    in_use = sorted(others)
    ids, one = ", ".join(in_use), len(in_use) == 1
    raise KeyInUseError(
        f"{KEY_IN_USE_PREFIX} {ids} of IAM user {user}: the user already has two access keys, "
        f"and {ids} {'is' if one else 'are'} Active and not the AWSCURRENT or AWSPREVIOUS key of "
        f"secret {arn}, so {'it' if one else 'they'} may be in use elsewhere. Deactivate or delete "
        f"{'it' if one else 'one'} (aws iam update-access-key --user-name {user} --access-key-id "
        f"{in_use[0]} --status Inactive), then rotate again"
    )


def _never_current(versions: list[dict[str, Any]], token: str) -> list[str]:
    """Versions left by failed rotations: no label, created no earlier than the AWSCURRENT one.

    AWSCURRENT only ever moves forward to a newer version here (finishSecret), and the version
    it leaves takes AWSPREVIOUS, so a label-less version at least as new as AWSCURRENT's was a
    pending version whose rotation stopped (the operator took its AWSPENDING label off).
    """
    current = next((v for v in versions if AWSCURRENT in (v.get("VersionStages") or [])), None)
    since = _created(versions, str(current["VersionId"])) if current else None
    if since is None:
        return []
    return [
        str(v["VersionId"])
        for v in versions
        if v.get("VersionId") != token
        and not v.get("VersionStages")
        and "CreatedDate" in v
        and _seconds(v["CreatedDate"]) >= since
    ]


def _key_in(sm: SecretsManagerClient, arn: str, **version: str) -> str | None:
    """The access key id a version holds; None when there is no such version or it holds none."""
    try:
        value = _read_json(sm, arn, **version)
    except ClientError as error:
        if _code(error) == "ResourceNotFoundException":
            return None
        raise
    except RotationError:  # not a JSON object: it holds no key of ours
        return None
    key_id = value.get("accesskey")
    return key_id if isinstance(key_id, str) and key_id else None


def _pending_key_id(sm: SecretsManagerClient, arn: str, token: str) -> str | None:
    """The key id stored under the token, or "?" when that cannot be known right now."""
    try:
        value = _read_json(sm, arn, VersionId=token, VersionStage=AWSPENDING)
    except ClientError as error:
        return None if _code(error) == "ResourceNotFoundException" else "?"
    except Exception:
        return "?"
    key_id = value.get("accesskey")
    return key_id if isinstance(key_id, str) else None


def _discard_key(iam: IAMClient, user: str, key_id: str) -> None:
    try:
        iam.delete_access_key(UserName=user, AccessKeyId=key_id)
        logger.info("createSecret: deleted unstored key %s of %s", key_id, user)
    except Exception as error:  # best effort: the next attempt's orphan sweep removes it
        logger.warning(
            "createSecret: could not delete unstored key %s of %s: %s",
            key_id,
            user,
            _describe_error(error),
        )


def _test_secret(
    sm: SecretsManagerClient,
    arn: str,
    token: str,
    metadata: Mapping[str, Any],
    current: dict[str, Any],
    user: str,
) -> None:
    pending = _read_json(sm, arn, VersionId=token, VersionStage=AWSPENDING)
    key_id, secret = pending.get("accesskey"), pending.get("secretkey")
    if pending.get("username") != user:
        raise RotationError(f"version {token} of secret {arn} names another user than {user}")
    if not isinstance(key_id, str) or not key_id or not isinstance(secret, str) or not secret:
        raise RotationError(f"version {token} of secret {arn} holds no accesskey/secretkey")
    expected = _iam_client(sm, metadata, current).get_user(UserName=user)["User"]["Arn"]

    attempts = max(1, int(os.environ.get("KEYROTOR_TEST_ATTEMPTS", "8")))
    delay = float(os.environ.get("KEYROTOR_TEST_BASE_DELAY_SECONDS", "1"))
    max_delay = float(os.environ.get("KEYROTOR_TEST_MAX_DELAY_SECONDS", "10"))
    sts = boto3.client("sts", aws_access_key_id=key_id, aws_secret_access_key=secret)
    for attempt in range(1, attempts + 1):
        try:
            caller = sts.get_caller_identity()["Arn"]
            break
        except ClientError as error:
            code = _code(error)
            if code not in _PROPAGATION_ERRORS:
                raise
            if attempt == attempts:
                raise RotationError(
                    f"pending key {key_id} of IAM user {user} (secret {arn}, version {token}) "
                    f"was refused by STS with {code} after {attempts} attempts"
                ) from None
            logger.info(
                "testSecret: key %s not accepted yet (%s), retrying in %.3gs", key_id, code, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    if caller != expected:
        raise RotationError(
            f"pending key {key_id} (secret {arn}, version {token}) authenticates as {caller}, "
            f"not as {expected}"
        )
    logger.info("testSecret: key %s authenticates as %s", key_id, caller)


def _finish_secret(
    sm: SecretsManagerClient, arn: str, token: str, versions: dict[str, list[str]]
) -> None:
    stages = versions[token]
    if AWSCURRENT not in stages and AWSPENDING not in stages:
        raise RotationError(f"version {token} of secret {arn} is not AWSPENDING for rotation")
    if AWSCURRENT not in stages:
        current = next((v for v, s in versions.items() if AWSCURRENT in s), None)
        kwargs = {"RemoveFromVersionId": current} if current else {}
        sm.update_secret_version_stage(
            SecretId=arn, VersionStage=AWSCURRENT, MoveToVersionId=token, **kwargs
        )
        logger.info(
            "finishSecret: version %s of %s is now AWSCURRENT (was %s)", token, arn, current
        )
    if AWSPENDING in stages:
        sm.update_secret_version_stage(
            SecretId=arn, VersionStage=AWSPENDING, RemoveFromVersionId=token
        )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _describe_error(error: Exception) -> str:
    """An AWS error's code and message (AWS never puts a secret in them), else the class name."""
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        return f"{detail.get('Code', type(error).__name__)}: {detail.get('Message', '')}".rstrip()
    return type(error).__name__
