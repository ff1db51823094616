"""Which customer managed KMS keys an object may encrypt its secret with. No I/O here.

An installation allows keys by ARN (``--kms-key``, repeatable, or ``KEYROTOR_KMS_KEY``); the
operator's and the rotation Lambda's policies grant exactly those keys (keyrotor.aws.policies).
A tenant chooses ``spec.secretsManager.kmsKeyId``: any other key is refused on the object, so
that one team cannot have its secret encrypted with another team's key.
"""

from __future__ import annotations

from collections.abc import Sequence

KMS_KEY_NOT_ALLOWED = "KmsKeyNotAllowed"


def kms_key_problem(kms_key_id: str | None, allowed: Sequence[str]) -> str | None:
    """None when the object may use this key (or none); otherwise what to do instead."""
    if not kms_key_id or kms_key_id in allowed:
        return None
    if not allowed:
        return (
            f"spec.secretsManager.kmsKeyId {kms_key_id!r}: this keyrotor installation allows no "
            f"customer managed KMS key; remove the field (the secret then uses the AWS managed "
            f"key aws/secretsmanager), or ask the platform team to start keyrotor with "
            f"--kms-key <key ARN>"
        )
    return (
        f"spec.secretsManager.kmsKeyId {kms_key_id!r} is not a KMS key this keyrotor installation "
        f"allows; use one of {', '.join(allowed)} (by its key ARN), or ask the platform team to "
        f"add it with --kms-key"
    )


def kms_key_update_needed(wanted: str | None, current: str | None) -> bool:
    """UpdateSecret only when the object names a key and the secret has another one."""
    return bool(wanted) and wanted != current
