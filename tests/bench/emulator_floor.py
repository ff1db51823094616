"""The emulator's own throughput for the work of N objects coming up: the lower bound of the
scale stage's "apply to all Ready" (issue 10).

With the operator's installation in place (its rotation Lambda and role), the bench itself does
what keyrotor does for each object, straight against the emulator and as fast as it can (a few
client threads; the emulator serves one request at a time): ``CreateSecret`` (the user name only)
and ``RotateSecret`` with the Lambda (rotate at once), for N fresh IAM users; then it waits until
every rotation (createSecret, setSecret, testSecret, finishSecret in the in-process Lambda) has
finished. No operator, no Kubernetes, no reads beyond what the Lambda does itself. The time from
the first CreateSecret to the last finished rotation is what the emulator alone needs: keyrotor
cannot bring the same objects up faster on this machine.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from keyrotor.model import TAG_IAM_USER

if TYPE_CHECKING:
    from keyrotor_sandbox.aws import AwsEmulator

CLIENT_THREADS = 4
RULES = {"ScheduleExpression": "rate(90 days)"}


def emulator_floor(
    aws: AwsEmulator, *, cluster: str, users: list[str], lambda_arn: str, timeout: float
) -> dict[str, Any]:
    """Create and rotate one secret per user; seconds until every rotation finished."""
    sm = aws.client("secretsmanager")
    arns: list[str] = []

    def bring_up(user: str) -> str:
        arn = str(
            sm.create_secret(
                Name=f"keyrotor/{cluster}/bench-floor/{user}",
                SecretString=json.dumps({"username": user}),
                Tags=[{"Key": TAG_IAM_USER, "Value": user}],
            )["ARN"]
        )
        sm.rotate_secret(
            SecretId=arn, RotationLambdaARN=lambda_arn, RotationRules=RULES, RotateImmediately=True
        )
        return arn

    began_wall = time.time()
    began = time.monotonic()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        arns = list(pool.map(bring_up, users))
    requested = time.monotonic() - began
    aws.wait_for_rotations(timeout=timeout)
    rotations = [r for arn in arns for r in aws.rotations_of(arn)]
    finished = [r.finished.timestamp() for r in rotations if r.finished is not None]
    failed = sum(1 for r in rotations if not r.succeeded)
    return {
        "objects": len(users),
        "client_threads": CLIENT_THREADS,
        "requests_s": requested,
        "all_rotated_s": (max(finished) - began_wall) if finished else None,
        "rotations": len(rotations),
        "failed_rotations": failed,
    }
