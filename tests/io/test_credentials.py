"""Missing or refused S3 credentials: one line naming the URL and the fix, exit 2, no retries."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgcore.errors import InputError
from sgcore.io import (
    RetryPolicy,
    StorageAuthError,
    plan_shards,
    read_manifest,
    retry_call,
    storage_auth_error,
)

botocore_exceptions = pytest.importorskip("botocore.exceptions")
s3fs_errors = pytest.importorskip("s3fs.errors")

REPO = Path(__file__).resolve().parents[2]
FIX = ("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE), or "
       "--storage-options '{\"key\": ..., \"secret\": ...}'")
CHECK = ("check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --storage-options) "
         "and that they may read it")
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_credentials_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine with no AWS credentials anywhere (and no instance role)."""
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
               AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               # botocore signs before it connects: nothing needs to listen here.
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}")
    return env


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    env = _no_credentials_env(tmp_path)
    for var in _CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_EC2_METADATA_DISABLED", "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_CONFIG_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(var, env[var])
    # A fresh S3FileSystem: a cached one may hold credentials from another test.
    return {"skip_instance_cache": True}


def _client_error(code: str, message: str, status: int = 403):
    return botocore_exceptions.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ListObjectsV2")


# -------------------------------------------------------------- classification
@pytest.mark.parametrize(("exc", "message"), [
    (botocore_exceptions.NoCredentialsError(), f"no AWS credentials to list s3://b/in: {FIX}"),
    (botocore_exceptions.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
     f"no AWS credentials to list s3://b/in (Partial credentials found in env, missing: "
     f"AWS_SECRET_ACCESS_KEY): {FIX}"),
    (botocore_exceptions.ProfileNotFound(profile="prod"),
     f"no AWS credentials to list s3://b/in (The config profile (prod) could not be found): {FIX}"),
    (s3fs_errors.translate_boto_error(_client_error(
        "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")),
     "storage refused to list s3://b/in (InvalidAccessKeyId: The AWS Access Key Id you provided does not "
     f"exist in our records.): {CHECK}"),
    (s3fs_errors.translate_boto_error(_client_error("SignatureDoesNotMatch", "bad signature")),
     f"storage refused to list s3://b/in (SignatureDoesNotMatch: bad signature): {CHECK}"),
    (s3fs_errors.translate_boto_error(_client_error("AccessDenied", "Access Denied")),
     f"storage refused to list s3://b/in (AccessDenied: Access Denied): {CHECK}"),
])
def test_credential_errors_are_one_line_and_never_retried(exc, message):
    calls = []

    def fail():
        calls.append(1)
        raise exc

    with pytest.raises(StorageAuthError) as e:
        retry_call(fail, what="list s3://b/in", policy=RetryPolicy(attempts=5, base_delay=0, max_delay=0))
    assert len(calls) == 1
    assert str(e.value) == message
    assert isinstance(e.value, InputError) and isinstance(e.value, PermissionError)


@pytest.mark.parametrize("exc", [
    PermissionError("local file mode 000"),
    FileNotFoundError("no such key"),
    s3fs_errors.translate_boto_error(_client_error("NoSuchKey", "gone", 404)),
    s3fs_errors.translate_boto_error(_client_error("SlowDown", "slow", 503)),
])
def test_other_errors_are_not_credential_errors(exc):
    assert storage_auth_error(exc, "read x") is None


# ------------------------------------------------------- real s3fs, no credentials
def test_listing_and_manifest_without_credentials(no_credentials):
    with pytest.raises(StorageAuthError, match=r"^no AWS credentials to list s3://some-bucket/images/: set "):
        plan_shards("s3://some-bucket/images/", shard_size=4, storage_options=no_credentials)
    with pytest.raises(StorageAuthError, match=r"^no AWS credentials to read s3://some-bucket/out/_manifest\.json: "):
        read_manifest("s3://some-bucket/out/", no_credentials)


def test_wrong_keys_against_an_s3_that_checks_them(s3_server, monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    import moto.settings

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("sgcore-auth")
    fs.pipe("sgcore-auth/in/x.png", b"not read")
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto now checks keys
    with pytest.raises(StorageAuthError, match=r"^storage refused to list s3://sgcore-auth/in/ \(InvalidAccessKeyId: "
                                               r"The AWS Access Key Id you provided does not exist in our "
                                               r"records\.\): check the credentials"):
        plan_shards("s3://sgcore-auth/in/", shard_size=4,
                    storage_options={"key": "AKIAWRONG", "secret": "wrong", "skip_instance_cache": True})


# ----------------------------------------------------------------- the real job
@pytest.mark.parametrize(("args", "line"), [
    (["--input", "s3://some-bucket/images/", "--output", "{tmp}/out"],
     f"error: no AWS credentials to list s3://some-bucket/images/: {FIX}"),
    (["--input", "{tmp}/in", "--output", "s3://some-bucket/out/"],
     # the first thing the job touches in the output is its one-writer claim
     f"error: no AWS credentials to read s3://some-bucket/out/_lease.json: {FIX}"),
])
def test_job_without_credentials_exits_2_with_one_line(tmp_path, args, line):
    from tests.io.datasets import encode, rgb

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(rgb(0)))
    argv = [a.format(tmp=tmp_path) for a in args]
    env = _no_credentials_env(tmp_path)
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "jobs.smoothgrad", "--model", "demo", "--quiet", *argv],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip() == line


def test_checkpoint_without_credentials(no_credentials):
    from sgcore.errors import ConfigError
    from sgcore.models import load_model

    with pytest.raises(ConfigError, match=r"^could not read checkpoint s3://some-bucket/m\.pt: Unable to locate "
                                          r"credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile "
                                          r"\(AWS_PROFILE\), or --storage-options$"):
        load_model("demo", "s3://some-bucket/m.pt", storage_options=no_credentials)
