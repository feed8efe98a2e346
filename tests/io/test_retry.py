"""Transient storage errors are retried with backoff; permanent ones fail at once."""

import errno
import random
import time

import pytest

from sgcore.io import (
    DEFAULT_STORAGE_RETRY_S,
    RetryPolicy,
    StorageUnavailable,
    decode_shard,
    is_transient,
    plan_shards,
    retry_call,
    set_default_policy,
    storage_policy,
    write_bytes,
)
from sgcore.io._flaky import FlakyFileSystem
from sgcore.io._fs import url_to_fs
from sgcore.io._retry import default_policy

FAST = RetryPolicy(attempts=5, base_delay=0.0, max_delay=0.0)


class _ClientError(Exception):
    """Shaped like botocore's ClientError (the classifier reads ``response``)."""

    def __init__(self, code, status):
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class ReadTimeoutError(Exception):
    """Named like botocore's: classified by class name, botocore never imported."""


def _translated(cause):
    # What s3fs.errors.translate_boto_error makes of an unknown code: OSError(EIO) + cause.
    e = OSError(errno.EIO, "translated")
    e.__cause__ = cause
    return e


@pytest.mark.parametrize("exc, transient", [
    (TimeoutError("read timed out"), True),
    (ConnectionResetError("reset by peer"), True),
    (OSError(errno.EAGAIN, "try again"), True),
    (OSError(errno.EBUSY, "SlowDown"), True),
    (_ClientError("SlowDown", 503), True),
    (_ClientError("Throttling", 400), True),
    (_ClientError("RequestTimeout", 400), True),
    (_ClientError("InternalError", 500), True),
    (_ClientError("Whatever", 502), True),
    (_translated(_ClientError("ServiceUnavailable", 503)), True),
    (ReadTimeoutError("botocore read timeout"), True),
    (OSError("Please reduce your request rate."), True),
    (FileNotFoundError("no such key"), False),
    (PermissionError("access denied"), False),
    (_ClientError("AccessDenied", 403), False),
    (_ClientError("NoSuchBucket", 404), False),
    (_translated(_ClientError("InvalidRange", 416)), False),
    (OSError(errno.ENOSPC, "disk full"), False),
    (ValueError("bad data"), False),
])
def test_classification(exc, transient):
    assert is_transient(exc) is transient


def test_transient_errors_are_retried_then_succeed():
    calls, sleeps = [], []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow")
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.3)
    assert retry_call(fn, what="read s3://b/k", policy=policy, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0.0 <= sleeps[0] <= 0.1 and 0.0 <= sleeps[1] <= 0.2


def test_permanent_error_is_not_retried():
    calls = []

    def fn():
        calls.append(1)
        raise FileNotFoundError("s3://b/missing")

    with pytest.raises(FileNotFoundError, match="missing"):
        retry_call(fn, what="read s3://b/missing", policy=FAST, sleep=lambda s: None)
    assert len(calls) == 1


def test_gives_up_after_the_attempts_naming_the_url():
    calls = []

    def fn():
        calls.append(1)
        raise OSError(errno.EBUSY, "SlowDown")

    with pytest.raises(StorageUnavailable,
                       match=r"read s3://b/k: still failing after 5 attempts over \d+\.\d s: OSError"):
        retry_call(fn, what="read s3://b/k", policy=FAST, sleep=lambda s: None)
    assert len(calls) == 5


def test_the_time_budget_bounds_the_retries_and_outlasts_a_short_outage():
    start = time.monotonic()
    calls = []

    def fn():
        calls.append(1)
        if time.monotonic() - start < 0.6:  # an outage of 0.6 s
            raise TimeoutError("read timed out")
        return "ok"

    assert retry_call(fn, what="read s3://b/k", policy=storage_policy(3.0)) == "ok"
    assert len(calls) > 1
    calls.clear()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"read s3://b/k: still failing after \d+ attempts over 0\.\d s"):
        retry_call(fn, what="read s3://b/k", policy=storage_policy(0.3))
    assert time.monotonic() - start < 0.5
    # the process default is what the job sets from --storage-retry-s
    previous = set_default_policy(storage_policy(0.0))
    try:
        start = time.monotonic()
        with pytest.raises(StorageUnavailable):
            retry_call(fn, what="read s3://b/k")
    finally:
        set_default_policy(previous)
    assert default_policy().max_elapsed == DEFAULT_STORAGE_RETRY_S >= 90  # a typical outage


def test_backoff_is_capped_exponential_with_full_jitter():
    policy = RetryPolicy(attempts=5, base_delay=0.2, max_delay=1.0)
    rng = random.Random(0)
    for attempt, cap in [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.0), (6, 1.0)]:
        waits = [policy.delay(attempt, rng) for _ in range(200)]
        assert 0.0 <= min(waits) and max(waits) <= cap and max(waits) > 0.6 * cap
    default = RetryPolicy()
    assert sum(min(default.max_delay, default.base_delay * 2**k) for k in range(default.attempts - 1)) < 10


@pytest.mark.parametrize("kwargs, match", [
    ({"attempts": 0}, r"attempts must be >= 1; got 0"),
    ({"base_delay": -1.0}, r"base_delay and max_delay must be >= 0; got -1.0 and 4.0"),
])
def test_policy_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)


# ----------------------------------------------------------- flaky filesystem
def _flaky(tmp_path, **opts):
    FlakyFileSystem.clear_instance_cache()
    fs, _ = url_to_fs(f"flaky://{tmp_path}", opts)
    return fs


def test_flaky_filesystem_fails_a_deterministic_share_then_recovers(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i}.bin").write_bytes(b"x%d" % i)
    fs = _flaky(tmp_path, fail_fraction=0.5, failures=2, error="slowdown")
    chosen = [i for i in range(40) if fs.chosen(f"{tmp_path}/f{i}.bin")]
    assert 10 <= len(chosen) <= 30  # about half, and the same set every time
    assert chosen == [i for i in range(40) if _flaky(tmp_path, fail_fraction=0.5).chosen(f"{tmp_path}/f{i}.bin")]
    p = f"{tmp_path}/f{chosen[0]}.bin"
    for _ in range(2):
        with pytest.raises(OSError, match="SlowDown"):
            fs.cat_file(p)
    assert fs.cat_file(p) == b"x%d" % chosen[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"fail_fraction": 1.5}, r"fail_fraction must be in \[0, 1\]; got 1.5"),
    ({"error": "gremlins"}, r"error must be one of timeout, connection, .*; got 'gremlins'"),
    ({"ops": ["delete"]}, r"ops must be among cat_file, pipe_file, open; got \['delete'\]"),
])
def test_flaky_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlakyFileSystem(**kwargs)


def test_reads_survive_transient_errors_on_every_object(image_dir):
    opts = {"fail_fraction": 1.0, "failures": 2, "error": "timeout"}
    FlakyFileSystem.clear_instance_cache()
    (spec,) = plan_shards(f"flaky://{image_dir}", shard_size=100, storage_options=opts)
    decoded = decode_shard(spec, resize_size=8, crop_size=8, storage_options=opts)
    errors = {r.image_id: r.error for r in decoded.records if r.error}
    assert list(errors) == ["cat/broken.jpg"] and "cannot decode image" in errors["cat/broken.jpg"]
    assert decoded.num_ok == 6


def test_permanent_outage_becomes_error_rows_naming_the_url(image_dir):
    opts = {"fail_fraction": 1.0, "failures": -1, "error": "permission", "ops": ["cat_file"]}
    FlakyFileSystem.clear_instance_cache()
    (spec,) = plan_shards(f"flaky://{image_dir}", shard_size=100, storage_options=opts)
    decoded = decode_shard(spec, resize_size=8, crop_size=8, storage_options=opts)
    assert decoded.num_ok == 0 and len(decoded.records) == 7
    rec = decoded.records[0]
    assert rec.error.startswith(f"cannot read flaky://{image_dir}/{rec.image_id}: PermissionError")


@pytest.mark.parametrize("layout", ["images", "webdataset", "parquet"])
def test_storage_down_past_the_budget_fails_the_shard_instead_of_error_rows(tmp_path, layout):
    from tests.io.datasets import encode, rgb, tar_samples, write_parquet, write_tar

    root = tmp_path / "in"
    root.mkdir()
    if layout == "images":
        for i in range(3):
            (root / f"{i}.png").write_bytes(encode(rgb(i)))
    elif layout == "webdataset":
        write_tar(root / "a.tar", tar_samples("s", 3))
    else:
        write_parquet(root / "p.parquet", [encode(rgb(i)) for i in range(3)])
    FlakyFileSystem.clear_instance_cache()
    (spec,) = plan_shards(f"flaky://{root}", shard_size=100, storage_options={"fail_fraction": 0.0})
    FlakyFileSystem.clear_instance_cache()
    down = {"fail_fraction": 1.0, "until": time.time() + 3600, "error": "timeout", "ops": ["cat_file", "open"]}
    previous = set_default_policy(storage_policy(0.2))
    try:
        with pytest.raises(StorageUnavailable, match=r"still failing after \d+ attempts over 0\.\d s: TimeoutError"):
            decode_shard(spec, resize_size=8, crop_size=8, storage_options=down)
        # an outage shorter than the budget: every image decodes
        FlakyFileSystem.clear_instance_cache()
        short = {**down, "until": time.time() + 0.5}
        set_default_policy(storage_policy(5.0))
        decoded = decode_shard(spec, resize_size=8, crop_size=8, storage_options=short)
        assert decoded.num_ok == 3 and not any(r.error for r in decoded.records)
    finally:
        set_default_policy(previous)


def test_write_retries_transient_errors_and_names_the_url_on_permanent_ones(tmp_path):
    opts = {"fail_fraction": 1.0, "failures": 3, "error": "server"}
    FlakyFileSystem.clear_instance_cache()
    write_bytes(f"flaky://{tmp_path}/out/part-0.parquet", b"data", opts, policy=FAST)
    assert (tmp_path / "out" / "part-0.parquet").read_bytes() == b"data"
    opts = {"fail_fraction": 1.0, "failures": -1, "error": "permission"}
    with pytest.raises(PermissionError, match=f"cannot write flaky://{tmp_path}/out/part-1.parquet"):
        write_bytes(f"flaky://{tmp_path}/out/part-1.parquet", b"data", opts, policy=FAST)
    opts = {"fail_fraction": 1.0, "failures": -1, "error": "slowdown"}
    with pytest.raises(StorageUnavailable, match=f"write flaky://{tmp_path}/out/part-2.parquet: still failing after 5"):
        write_bytes(f"flaky://{tmp_path}/out/part-2.parquet", b"data", opts, policy=FAST)


def test_manifest_success_and_part_metadata_survive_transient_errors(tmp_path):
    from sgcore.io import (
        Manifest,
        Plan,
        encode_part,
        read_manifest,
        read_part_metadata,
        write_manifest,
        write_success,
    )

    opts = {"fail_fraction": 1.0, "failures": 2, "error": "connection"}
    FlakyFileSystem.clear_instance_cache()
    out = f"flaky://{tmp_path}/out"
    manifest = Manifest(config={}, config_hash="h", preprocess={}, plan=Plan(shards=1, images=1, fingerprint="f"))
    write_manifest(out, manifest, opts)
    write_success(out, opts)
    data, _ = encode_part([], map_shape=(2, 2), metadata={"config_hash": "h"})
    write_bytes(f"{out}/part-00000.parquet", data, opts)
    assert read_manifest(out, opts) == manifest
    assert read_part_metadata(f"{out}/part-00000.parquet", opts) == {"config_hash": "h"}
    # The marker is really there, read past the flaky layer (whose exists()/info() never fail).
    assert (tmp_path / "out" / "_SUCCESS").read_bytes() == b""
    # Every write and read met two connection resets and went through on the third call:
    # it is the retries, not a quiet filesystem, that got each of them there.
    fs, _ = url_to_fs(out, opts)
    root = f"{tmp_path}/out"
    assert fs.calls == {
        ("pipe_file", f"{root}/_manifest.json"): 3,
        ("pipe_file", f"{root}/_SUCCESS"): 3,
        ("pipe_file", f"{root}/part-00000.parquet"): 3,
        ("cat_file", f"{root}/_manifest.json"): 3,
        ("open", f"{root}/part-00000.parquet"): 3,
    }
    assert fs.injected == 10


def test_the_job_knows_no_flaky_filesystem(tmp_path):
    # flaky:// is registered by the test support only (tests/conftest.py), never by sgcore itself.
    import subprocess
    import sys

    code = f"from sgcore.io import url_to_fs; url_to_fs('flaky://{tmp_path}')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and "InputError: cannot open flaky://" in out.stderr
    assert "Protocol not known: flaky" in out.stderr
