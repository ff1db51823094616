"""The rotation Lambda's deployment package, built byte-for-byte reproducibly.

The zip holds one file, ``lambda_function.py`` (the source of :mod:`keyrotor.rotation_lambda`),
with a fixed timestamp, permissions and compression level, so the same handler source always
gives the same bytes and the same ``CodeSha256`` on every machine. The operator compares that
hash with the deployed function's and updates the code only when the handler really changed.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import io
import zipfile
from dataclasses import dataclass
from functools import cache

HANDLER = "lambda_function.lambda_handler"
MODULE_FILENAME = "lambda_function.py"
# 1980-01-01 00:00:00 is the earliest time a zip entry can carry; any fixed value would do.
_FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644  # regular file, rw-r--r--


@dataclass(frozen=True)
class LambdaPackage:
    zip_bytes: bytes
    code_sha256: str  # base64 of the SHA-256 of the zip, as Lambda reports CodeSha256


def handler_source() -> bytes:
    """The rotation handler's source, with line endings normalised."""
    raw = importlib.resources.files("keyrotor").joinpath("rotation_lambda.py").read_bytes()
    return raw.replace(b"\r\n", b"\n")


def build_zip(source: bytes) -> bytes:
    buffer = io.BytesIO()
    info = zipfile.ZipInfo(MODULE_FILENAME, date_time=_FIXED_DATE_TIME)
    info.external_attr = _FILE_MODE << 16
    info.create_system = 3  # unix, whatever the building machine is
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, source, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buffer.getvalue()


def code_sha256(zip_bytes: bytes) -> str:
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode("ascii")


@cache
def rotation_lambda_package() -> LambdaPackage:
    """The package of the handler shipped with this keyrotor version (built once per process)."""
    data = build_zip(handler_source())
    return LambdaPackage(zip_bytes=data, code_sha256=code_sha256(data))
