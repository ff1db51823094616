"""The rotation Lambda zip is byte-for-byte reproducible; its hash is the one Lambda reports."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from io import BytesIO
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from keyrotor.aws.lambda_package import (
    HANDLER,
    MODULE_FILENAME,
    build_zip,
    code_sha256,
    handler_source,
    rotation_lambda_package,
)

SOURCE = Path(__file__).parents[2] / "operator" / "keyrotor" / "rotation_lambda.py"


def test_same_bytes_whatever_the_file_times_and_modes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.py", tmp_path / "b.py"
    shutil.copyfile(SOURCE, first)
    shutil.copyfile(SOURCE, second)
    os.utime(first, (0, 0))
    os.utime(second, (2_000_000_000, 2_000_000_000))
    first.chmod(stat.S_IRUSR)
    second.chmod(0o777)
    old_umask = os.umask(0o077)
    try:
        one = build_zip(first.read_bytes())
    finally:
        os.umask(old_umask)
    two = build_zip(second.read_bytes())
    assert one == two == rotation_lambda_package().zip_bytes
    assert code_sha256(one) == rotation_lambda_package().code_sha256


def test_zip_holds_the_handler_with_fixed_metadata() -> None:
    with zipfile.ZipFile(BytesIO(rotation_lambda_package().zip_bytes)) as archive:
        (info,) = archive.infolist()
        assert info.filename == MODULE_FILENAME == HANDLER.split(".")[0] + ".py"
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o100644
        assert archive.read(info) == handler_source() == SOURCE.read_bytes().replace(b"\r\n", b"\n")


def test_a_changed_handler_changes_the_hash() -> None:
    changed = build_zip(handler_source() + b"\n# changed\n")
    assert code_sha256(changed) != rotation_lambda_package().code_sha256


def test_code_sha256_is_what_lambda_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    package = rotation_lambda_package()
    with mock_aws():
        role = boto3.client("iam", region_name="us-east-1").create_role(
            RoleName="rotation", AssumeRolePolicyDocument="{}"
        )["Role"]["Arn"]
        lam = boto3.client("lambda", region_name="us-east-1")
        created = lam.create_function(
            FunctionName="rotation",
            Runtime="python3.12",
            Role=role,
            Handler=HANDLER,
            Code={"ZipFile": package.zip_bytes},
        )
        assert created["CodeSha256"] == package.code_sha256
        fetched = lam.get_function(FunctionName="rotation")["Configuration"]
        assert fetched["CodeSha256"] == package.code_sha256
        assert fetched["CodeSize"] == len(package.zip_bytes)
