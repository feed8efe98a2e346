"""Credentials inside URLs: redacted where they are recorded or printed, nothing else changed.

The end-to-end proof (a real job and audit, the secret grepped across every file,
the console and Ray's session logs) is ``tests/pipeline/test_secrets.py``.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid

import pytest

from sgcore.redact import has_userinfo, is_redacted, redact_text, redact_url, redact_value

# Fixed, not random: pytest-xdist workers must collect the same test ids.
SECRET = "S" + uuid.uuid5(uuid.NAMESPACE_URL, "sgcore-test-secret").hex


@pytest.mark.parametrize(("url", "expected"), [
    # presigned S3 (SigV4): signature, credential and session token go, the rest stays
    (f"https://b.s3.amazonaws.com/imgs/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={SECRET}"
     f"&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token={SECRET}"
     f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SECRET}",
     "https://b.s3.amazonaws.com/imgs/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=***"
     "&X-Amz-SignedHeaders=host&X-Amz-Signature=***"),
    # presigned S3 (SigV2), names in any case
    (f"https://b.s3.amazonaws.com/k.pt?AWSAccessKeyId={SECRET}&Expires=1&Signature={SECRET}",
     "https://b.s3.amazonaws.com/k.pt?AWSAccessKeyId=***&Expires=1&Signature=***"),
    # GCS signed URL
    (f"https://storage.googleapis.com/b/o.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={SECRET}"
     f"&X-Goog-Date=20260101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature={SECRET}",
     "https://storage.googleapis.com/b/o.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=***"
     "&X-Goog-Date=20260101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=***"),
    # Azure SAS: only sig is the secret; sv/se/sp/sr describe the grant
    (f"https://acc.blob.core.windows.net/c/a.tar?sv=2022-11-02&se=2026-01-01&sr=b&sp=r&sig={SECRET}",
     "https://acc.blob.core.windows.net/c/a.tar?sv=2022-11-02&se=2026-01-01&sr=b&sp=r&sig=***"),
    # tokens and keys
    (f"https://h/x.csv?token={SECRET}&version=2", "https://h/x.csv?token=***&version=2"),
    (f"https://h/x.csv?access_token={SECRET}", "https://h/x.csv?access_token=***"),
    (f"https://h/x.csv?KEY={SECRET}&my_api_key={SECRET}", "https://h/x.csv?KEY=***&my_api_key=***"),
    # userinfo, with a query too; a member after '#' is kept
    (f"http://user:{SECRET}@127.0.0.1:8000/w.pt?sig={SECRET}#m/a.jpg", "http://***@127.0.0.1:8000/w.pt?sig=***#m/a.jpg"),
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/imgs/", "s3://***@bucket/imgs/"),
    # an AWS secret key holds '/': pasted into a URL, it still goes
    (f"s3://AKIAEXAMPLE:ab/{SECRET}@bucket/imgs/", "s3://***@bucket/imgs/"),
    (f"ftp://{SECRET}@host/f.jpg", "ftp://***@host/f.jpg"),
    # no secret: unchanged, byte for byte
    ("s3://bucket/imgs/cat/1.jpg", "s3://bucket/imgs/cat/1.jpg"),
    ("https://h/x.jpg?versionId=3&response-content-type=image/jpeg", "https://h/x.jpg?versionId=3&response-content-type=image/jpeg"),
    ("s3://bucket/people/me@example.com/1.jpg", "s3://bucket/people/me@example.com/1.jpg"),
    ("https://host:8080/a@b.jpg", "https://host:8080/a@b.jpg"),
    ("https://h/x?token=", "https://h/x?token="),
    ("s3://b/shard-000.tar#key/a.jpg", "s3://b/shard-000.tar#key/a.jpg"),
    ("memory://sgtest/x.png", "memory://sgtest/x.png"),
    ("file:///data/x.png", "file:///data/x.png"),
    # local paths: no userinfo, no query
    ("/data/imgs/cat@2x.png", "/data/imgs/cat@2x.png"),
    ("relative/dir?token=literal-name", "relative/dir?token=literal-name"),
    ("C:\\data\\x.png", "C:\\data\\x.png"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert SECRET not in redact_url(url)
    assert redact_url(expected) == expected  # idempotent
    assert is_redacted(redact_url(url)) == (url != expected)


def test_redact_text_finds_urls_and_queries_in_free_text():
    text = (f"could not read checkpoint 'https://u:{SECRET}@h/w.pt?X-Amz-Signature={SECRET}': 403, "
            f"message='Forbidden', url=URL('https://h/w.pt?X-Amz-Signature={SECRET}&x=1') "
            f"(GET /w.pt?sig={SECRET} HTTP/1.1) <a href=\"x?y=1&amp;token={SECRET}\">")
    out = redact_text(text)
    assert SECRET not in out
    assert out == ("could not read checkpoint 'https://***@h/w.pt?X-Amz-Signature=***': 403, "
                   "message='Forbidden', url=URL('https://h/w.pt?X-Amz-Signature=***&x=1') "
                   "(GET /w.pt?sig=*** HTTP/1.1) <a href=\"x?y=1&amp;token=***\">")
    assert redact_text("shard 0003 failed: ZeroDivisionError") == "shard 0003 failed: ZeroDivisionError"


def test_redact_value_walks_dicts_and_lists_and_keeps_other_values():
    value = {"input": f"https://h/a?token={SECRET}", "n": 3, "x": None,
             "files": {f"https://u:{SECRET}@h/w.pt": "abc"}, "urls": [f"s3://k:{SECRET}@b/x", 1.5]}
    out = redact_value(value)
    assert SECRET not in json.dumps(out)
    assert out["n"] == 3 and out["x"] is None and out["urls"][1] == 1.5
    assert out["files"] == {"https://***@h/w.pt": "abc"}


@pytest.mark.parametrize(("url", "found"), [
    ("s3://k:s@b/x", True), ("https://u@h/x", True), ("s3://b/a@b.jpg", False), ("/a:b@c", False),
    ("https://h:80/x@y", False),
])
def test_has_userinfo(url, found):
    assert has_userinfo(url) is found


# ---------------------------------------------------------------- where URLs are recorded or printed


def test_job_config_public_dict_redacts_urls_but_the_config_keeps_them():
    from sgcore.config import JobConfig

    weights = f"https://h/w.pt?X-Amz-Signature={SECRET}"
    config = JobConfig(input=f"https://u:{SECRET}@h/imgs/", output="/tmp/out", weights=weights,
                       labels=f"https://h/l.csv?sig={SECRET}", model=f"hf:https://h/vit?token={SECRET}")
    public = config.public_dict()
    assert SECRET not in json.dumps(public)
    assert public["input"] == "https://***@h/imgs/" and public["weights"] == "https://h/w.pt?X-Amz-Signature=***"
    assert public["model"] == "hf:https://h/vit?token=***"
    assert config.weights == weights  # the job itself still reads the object


def test_url_to_fs_refuses_userinfo_on_object_stores_in_one_line_without_the_secret():
    from sgcore.errors import ConfigError
    from sgcore.io import url_to_fs

    for url in (f"s3://AKIAEXAMPLE:{SECRET}@bucket/imgs", f"s3://AKIAEXAMPLE:a/{SECRET}@bucket/imgs",
                f"memory://u:{SECRET}@/x"):
        with pytest.raises(ConfigError, match=r"does not take credentials from the URL.*--storage-options") as e:
            url_to_fs(url)
        assert SECRET not in str(e.value) and "***@" in str(e.value)


def test_a_redacted_url_is_refused_with_the_fix_instead_of_sending_stars():
    from sgcore.errors import ConfigError
    from sgcore.io import url_to_fs
    from sgcore.models.registry import read_weights_bytes

    with pytest.raises(ConfigError, match=r"recorded with its credentials redacted \(\*\*\*\); pass the full URL"):
        url_to_fs("https://h/x.tar?sig=***")
    with pytest.raises(ConfigError, match="recorded with its credentials redacted"):
        read_weights_bytes("http://***@127.0.0.1:9/w.pt", None)


def test_retry_messages_and_logs_name_the_url_redacted(caplog):
    from sgcore.io._retry import RetryPolicy, StorageUnavailable, retry_call

    def fails():
        raise TimeoutError(f"timed out: GET https://h/a.jpg?X-Amz-Signature={SECRET}")

    caplog.set_level(logging.DEBUG, logger="sgcore")
    with pytest.raises(StorageUnavailable) as e:
        retry_call(fails, what=f"read https://u:{SECRET}@h/a.jpg?token={SECRET}",
                   policy=RetryPolicy(attempts=2, base_delay=0.0), sleep=lambda s: None)
    assert SECRET not in str(e.value)
    assert str(e.value).startswith("read https://***@h/a.jpg?token=***: still failing after 2 attempts")
    assert caplog.records and SECRET not in caplog.text


def test_make_row_records_source_and_error_redacted():
    from sgcore.config import JobConfig
    from sgcore.io import Record
    from sgcore.pipeline.worker import make_row

    config = JobConfig(input="https://h/", output="/tmp/out")
    source = f"https://u:{SECRET}@h/shard.tar?sig={SECRET}#key/a.jpg"
    row = make_row(config, "0000", Record(image_id="key/a.jpg", source=source, label=None,
                                          error=f"cannot read {source}: 403"), crop=8)
    assert row.source == "https://***@h/shard.tar?sig=***#key/a.jpg"
    assert row.error == "cannot read https://***@h/shard.tar?sig=***#key/a.jpg: 403"
    assert row.image_id == "key/a.jpg"


def test_manifest_json_redacts_every_url_in_it():
    from sgcore.io.output import Manifest, RunEntry

    run = RunEntry.begin("2026-01-01T00:00:00", shards=0, skipped=0)
    manifest = Manifest.begin(config={"input": f"https://h/?token={SECRET}"}, config_hash="h", preprocess={},
                              model={"weights": f"https://u:{SECRET}@h/w.pt"}, fingerprint="f", shards=[],
                              committed={}, previous=None, run=run)
    text = manifest.to_json().decode()
    assert SECRET not in text and "https://h/?token=***" in text and "https://***@h/w.pt" in text


def test_audit_summary_and_page_redact_urls():
    from sgcore.audit.report import Report

    report = Report(title="t", subtitle=f"results s3://b/r · model demo (https://h/w.pt?a=1&token={SECRET})")
    files = report.files({"weights": f"https://h/w.pt?a=1&token={SECRET}", "n": [1, 2]})
    assert SECRET.encode() not in files["index.html"] and SECRET.encode() not in files["summary.json"]
    assert json.loads(files["summary.json"]) == {"weights": "https://h/w.pt?a=1&token=***", "n": [1, 2]}


def test_run_cli_prints_errors_and_tracebacks_redacted(capsys):
    from sgcore import cli
    from sgcore.errors import InputError

    def bad_input():
        raise InputError(f"input https://h/x?token={SECRET} does not exist")

    assert cli.run_cli(bad_input) == 2
    assert capsys.readouterr().err == "error: input https://h/x?token=*** does not exist\n"

    def bug():
        raise KeyError(f"https://u:{SECRET}@h/x")

    saved = sys.excepthook
    try:
        with pytest.raises(KeyError) as e:  # a bug still raises ...
            cli.run_cli(bug)
        sys.excepthook(e.type, e.value, e.tb)  # ... and Python prints it through the hook
    finally:
        sys.excepthook = saved
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'https://***@h/x'" in err and SECRET not in err


def test_jobs_submit_warns_that_ray_keeps_a_command_with_credentials(monkeypatch, capsys):
    import jobs.submit as js
    from tests.pipeline.test_submit import _FakeClient

    client = _FakeClient("SUCCEEDED")
    monkeypatch.setattr("sgcore.pipeline.submit.job_client", lambda address: client)
    argv = ["--no-working-dir", "--", "python", "-m", "jobs.smoothgrad", "--input", "s3://b/in/",
            "--weights", f"https://h/w.pt?X-Amz-Signature={SECRET}"]
    assert js.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: the command holds credentials inside a URL; Ray keeps the command" in err
    assert SECRET not in err
    assert js.main(argv[:-2]) == 0
    assert "warning" not in capsys.readouterr().err
