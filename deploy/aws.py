"""The boto3 session and clients the tool uses, and an AWS failure told in one line.

The session honours the usual settings: `--profile` or AWS_PROFILE, `--region` or
AWS_REGION / AWS_DEFAULT_REGION / the profile's region, and AWS_ENDPOINT_URL (and the
per-service AWS_ENDPOINT_URL_<SERVICE>), which boto3 reads itself. Clients retry in
botocore's "standard" mode (throttling, 5xx answers and connection errors, with
exponential backoff) up to DEFAULT_MAX_ATTEMPTS attempts; AWS_MAX_ATTEMPTS overrides that.
"""

from __future__ import annotations

import os

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from .errors import InputError

DEFAULT_MAX_ATTEMPTS = 8
# What the CLI catches and reports with `failure_line` (ParamValidationError,
# EndpointConnectionError, NoCredentialsError and NoRegionError are BotoCoreErrors).
AWS_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)
_HINTS = {
    NoRegionError: "pass --region or set AWS_DEFAULT_REGION",
    NoCredentialsError: "pass --profile, or set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
}
_MAX_LINE = 600


class Aws:
    """A boto3 session and its clients, one per service.

    It remembers the operation each client last started, so that an error raised before
    AWS answered (no credentials, no connection, bad parameters) still names it.
    """

    def __init__(self, profile: str | None = None, region: str | None = None):
        self.operation = "session"
        self.session = boto3.Session(profile_name=profile,
                                     region_name=region or os.environ.get("AWS_REGION") or None)
        attempts = os.environ.get("AWS_MAX_ATTEMPTS") or str(DEFAULT_MAX_ATTEMPTS)
        if not attempts.isdigit() or int(attempts) < 1:
            raise InputError(f"AWS_MAX_ATTEMPTS must be a whole number >= 1, not {attempts!r}")
        self._config = Config(retries={"mode": "standard", "max_attempts": int(attempts)})
        self._clients: dict = {}

    def client(self, service: str):
        """The boto3 client for `service` ("sagemaker", "s3", ...), created once."""
        if service not in self._clients:
            self.operation = f"{service} client"
            client = self.session.client(service, config=self._config)
            client.meta.events.register("before-parameter-build", self._note_operation)
            self._clients[service] = client
        return self._clients[service]

    def _note_operation(self, model, **_) -> None:
        self.operation = model.name


def failure_line(exc: Exception, operation: str = "session") -> str:
    """`<operation>: <code>: <message>` on one line, for any exception in AWS_ERRORS.

    A ClientError names its own operation; for the others (raised before AWS answered)
    `operation` is the one the Aws object last started (`Aws.operation`).
    """
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, AWS_ERRORS):
        exc = exc.__context__  # boto3's upload wraps the ClientError that says why
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        line = f"{exc.operation_name}: {error.get('Code') or status}: {error.get('Message') or exc}"
    else:
        hint = _HINTS.get(type(exc))
        line = f"{operation}: {type(exc).__name__}: {exc}" + (f" ({hint})" if hint else "")
    line = " ".join(line.split())  # ParamValidationError and HTML error pages span lines
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."
