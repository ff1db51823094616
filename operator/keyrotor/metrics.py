"""Prometheus metrics. Names only; no label ever carries a secret value."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

AWS_CALLS = Counter(
    "keyrotor_aws_api_calls_total", "AWS API calls made by the operator", ["service", "operation"]
)
ROTATIONS_REQUESTED = Counter(
    "keyrotor_rotations_requested_total", "Rotations keyrotor asked Secrets Manager for", ["cause"]
)
SYNCS = Counter("keyrotor_secret_syncs_total", "Writes of a mirrored Kubernetes Secret", ["cause"])
ERRORS = Counter("keyrotor_reconcile_errors_total", "Failed reconciles by reason", ["reason"])
STUCK_CLEARED = Counter("keyrotor_stuck_rotations_cleared_total", "Stuck rotations cleared")
PREVIOUS_KEY_ACTIONS = Counter(
    "keyrotor_previous_key_actions_total", "Previous keys deactivated or deleted", ["action"]
)
INSTALLATION_ENSURED = Counter(
    "keyrotor_installation_ensured_total",
    "Times the shared role, Lambda and permission were ensured",
)
RETRIES = Counter(
    "keyrotor_retries_total", "Failed decisions scheduled again with backoff (per object)"
)
BACKING_OFF = Gauge("keyrotor_objects_backing_off", "Objects whose last decision failed")
SYNC_LOOP_SWEEPS = Counter("keyrotor_sync_sweeps_total", "ListSecrets sweeps of the sync loop")


def count_aws_calls(client: Any) -> None:
    """Count every API call a boto3 client makes (botocore's before-call event)."""
    service = client.meta.service_model.service_name

    def _count(model: Any, **_: Any) -> None:
        AWS_CALLS.labels(service=service, operation=model.name).inc()

    client.meta.events.register("before-call.*.*", _count)
