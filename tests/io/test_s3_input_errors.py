"""An S3 URL the store cannot serve stops the job at once: one line naming it, exit 2.

Before, a malformed bucket name reached botocore's ParamValidationError unwrapped:
a 69-77-line traceback and exit 1. Checked on the real job, against the moto
server on loopback (no request leaves the machine).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgcore.errors import ConfigError, InputError
from sgcore.io import plan_shards, url_to_fs
from tests.io.datasets import encode, rgb

REPO = Path(__file__).resolve().parents[2]


def _job(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "a.png").write_bytes(encode(rgb(0)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "jobs.smoothgrad", "--model", "demo", "--quiet",
                           *(a.format(tmp=tmp_path) for a in argv)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("url, shown", [
    ("s3://Bad_Bucket!/x", "s3://Bad_Bucket!/x"),
    ("s3://bad bucket/x/", "s3://bad bucket/x/"),
])
def test_a_malformed_bucket_name_is_refused_before_any_request(url, shown):
    bucket = shown.split("://")[1].split("/")[0].rpartition("@")[2]
    line = (f"{shown} names an invalid S3 bucket '{bucket}': bucket names hold lowercase letters, digits, "
            "'.' and '-' (3 to 63 characters); check the URL")
    with pytest.raises(InputError) as info:
        url_to_fs(url)
    assert str(info.value) == line


def test_credentials_before_a_malformed_bucket_are_refused_first_and_never_shown():
    # Userinfo on s3:// is refused before the bucket is looked at (sgcore.io._fs.check_url_credentials).
    with pytest.raises(ConfigError, match=r"s3://\*\*\*@Bad!/x: s3:// does not take credentials") as info:
        url_to_fs("s3://AKIAKEY:s3cr3t@Bad!/x")
    assert "s3cr3t" not in str(info.value) and "AKIAKEY" not in str(info.value)


@pytest.mark.parametrize("argv, url", [
    (["--input", "s3://Bad_Bucket!/x", "--output", "{tmp}/out"], "s3://Bad_Bucket!/x"),
    (["--input", "{tmp}/in", "--output", "s3://Bad_Bucket!/out"], "s3://Bad_Bucket!/out"),
])
def test_the_job_refuses_a_malformed_bucket_in_one_line_exit_2(s3_server, tmp_path, argv, url):
    r = _job(tmp_path, *argv)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        f"error: {url} names an invalid S3 bucket 'Bad_Bucket!': bucket names hold lowercase letters, digits, "
        "'.' and '-' (3 to 63 characters); check the URL"]


def test_the_job_refuses_a_listing_answered_403_in_one_line_exit_2(s3_server, tmp_path, monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    import moto.settings

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("sgcore-403")
    fs.pipe("sgcore-403/in/a.png", encode(rgb(1)))
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto now refuses unknown keys
    with pytest.raises(InputError, match=r"^storage refused to list s3://sgcore-403/in/ \(InvalidAccessKeyId"):
        plan_shards("s3://sgcore-403/in/", shard_size=4, storage_options={"skip_instance_cache": True})
    r = _job(tmp_path, "--input", "s3://sgcore-403/in/", "--output", "{tmp}/out")
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: storage refused to list s3://sgcore-403/in/ (InvalidAccessKeyId: "), line
