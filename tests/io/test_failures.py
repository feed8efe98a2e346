"""Bad data becomes an error row with its message; a bug in the read path fails loudly."""

import errno
import tarfile
import zlib

import pyarrow as pa
import pytest
from PIL import Image, UnidentifiedImageError

from sgcore.errors import InputError
from sgcore.io import (
    StorageAuthError,
    StorageUnavailable,
    decode,
    decode_shard,
    plan_shards,
)
from sgcore.io.failures import DECODE_ERRORS, PIL_ERRORS, READ_ERRORS, STORAGE_ERRORS, DecodeError
from sgcore.io.layouts import parquet as parquet_input
from sgcore.io.layouts import webdataset as wds
from tests.io.datasets import encode, rgb, tar_samples, write_parquet, write_tar


# ------------------------------------------------------------- the tuples
@pytest.mark.parametrize("exc", [
    FileNotFoundError(errno.ENOENT, "gone"), PermissionError("refused"), TimeoutError("slow"),
    ConnectionResetError("reset"), OSError(errno.EIO, "translated by s3fs"),
    StorageUnavailable("down"), StorageAuthError("no credentials"),
])
def test_storage_errors_are_the_os_errors_of_the_store(exc):
    assert isinstance(exc, STORAGE_ERRORS) and isinstance(exc, READ_ERRORS)
    assert not isinstance(exc, DECODE_ERRORS) or isinstance(exc, EOFError)


def test_botocore_errors_are_storage_errors():
    botocore = pytest.importorskip("botocore.exceptions")
    assert isinstance(botocore.ParamValidationError(report="bad bucket"), STORAGE_ERRORS)
    assert isinstance(botocore.ClientError({"Error": {"Code": "X"}}, "GetObject"), STORAGE_ERRORS)


@pytest.mark.parametrize("exc", [
    DecodeError("not a recognised image format"), tarfile.ReadError("bad tar"), EOFError("cut"),
    zlib.error("bad stream"), pa.ArrowInvalid("Parquet magic bytes not found"),
    pa.ArrowTypeError("pyarrow's own"), pa.ArrowNotImplementedError("an encoding"),
])
def test_decode_errors_are_what_damaged_data_raises(exc):
    assert isinstance(exc, DECODE_ERRORS) and isinstance(exc, READ_ERRORS)


@pytest.mark.parametrize("exc", [
    TypeError("bug"), AttributeError("bug"), NameError("bug"), KeyError("bug"), IndexError("bug"),
    ValueError("bug"), InputError("a plan problem"), RuntimeError("bug"),
])
def test_programming_errors_are_neither(exc):
    assert not isinstance(exc, READ_ERRORS)


@pytest.mark.parametrize("exc", [
    UnidentifiedImageError("?"), OSError("image file is truncated"), SyntaxError("broken PNG file"),
    ValueError("Decompressed Data Too Large"), Image.DecompressionBombError("big"),
])
def test_pil_errors_cover_what_pil_raises_for_bad_bytes(exc):
    assert isinstance(exc, PIL_ERRORS)


def test_decode_error_is_the_one_of_sgcore_io():
    from sgcore.io import DecodeError as exported

    assert exported is DecodeError is decode.DecodeError
    assert issubclass(DecodeError, ValueError)


# -------------------------------------------------- bad data: an error row
def _records(root, **kwargs):
    return [r for s in plan_shards(str(root), shard_size=10, **kwargs)
            for r in decode_shard(s, resize_size=8, crop_size=8).records]


def test_a_corrupt_image_becomes_an_error_row_naming_it(tmp_path):
    (tmp_path / "good.png").write_bytes(encode(rgb(0)))
    (tmp_path / "text.jpg").write_bytes(b"this is a text file with an image extension")
    (tmp_path / "cut.png").write_bytes(encode(rgb(1))[:60])
    by_id = {r.image_id: r.error for r in _records(tmp_path)}
    assert by_id["good.png"] is None
    assert by_id["text.jpg"] == f"not a recognised image format ({tmp_path}/text.jpg)"
    assert by_id["cut.png"].startswith("cannot decode image: ") and by_id["cut.png"].endswith(
        f"({tmp_path}/cut.png)")


def test_an_image_gone_after_planning_becomes_an_error_row_naming_the_url(tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(encode(rgb(i)))
    (spec,) = plan_shards(str(tmp_path), shard_size=10)
    (tmp_path / "1.png").unlink()
    recs = decode_shard(spec, resize_size=8, crop_size=8).records
    assert recs[0].error is None
    assert recs[1].error.startswith(f"cannot read {tmp_path}/1.png: FileNotFoundError")


def test_a_damaged_tar_and_parquet_become_error_rows(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "b.tar").write_bytes(b"garbage, not a tar at all" * 40)
    (rec,) = _records(tmp_path / "t")
    assert rec.error.startswith(f"cannot read {tmp_path}/t/b.tar: ReadError: ")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "b.parquet").write_bytes(b"PAR1 definitely not parquet")
    (rec,) = _records(tmp_path / "p")
    assert rec.error.startswith(f"cannot read {tmp_path}/p/b.parquet: ArrowInvalid: ")


# ------------------------------------------- a bug in the read path: raised
def _bug(kind=TypeError):
    def raise_(*_args, **_kwargs):
        raise kind("a bug in sgcore, not in the data")
    return raise_


def test_a_bug_in_image_decoding_propagates(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(encode(rgb(0)))
    (spec,) = plan_shards(str(tmp_path), shard_size=10)
    monkeypatch.setattr(decode, "_to_rgb", _bug(AttributeError))
    with pytest.raises(AttributeError, match="a bug in sgcore"):
        decode_shard(spec, resize_size=8, crop_size=8)


def test_a_bug_under_the_image_reads_propagates(monkeypatch, memory_root):
    fs = memory_root.fs
    fs.pipe(memory_root.path("ds/a.png"), encode(rgb(0)))
    (spec,) = plan_shards(memory_root.join("ds"), shard_size=10)
    monkeypatch.setattr(type(fs), "cat_file", _bug(TypeError))
    with pytest.raises(TypeError, match="a bug in sgcore"):
        decode_shard(spec, resize_size=8, crop_size=8)


def test_a_bug_in_reading_a_tar_propagates(tmp_path, monkeypatch):
    write_tar(tmp_path / "a.tar", tar_samples("s", 2))
    (spec,) = plan_shards(str(tmp_path), shard_size=10)
    monkeypatch.setattr(wds.TarSample, "label", _bug(NameError))
    with pytest.raises(NameError, match="a bug in sgcore"):
        decode_shard(spec, resize_size=8, crop_size=8)


@pytest.mark.parametrize("limit", [None, 1])
def test_a_bug_in_scanning_a_tar_propagates_at_planning(tmp_path, monkeypatch, limit):
    write_tar(tmp_path / "a.tar", tar_samples("s", 2))
    monkeypatch.setattr(wds.TarScan, "_run", _bug(TypeError))
    with pytest.raises(TypeError, match="a bug in sgcore"):
        plan_shards(str(tmp_path), shard_size=10, limit=limit)


def test_a_bug_in_reading_parquet_propagates(tmp_path, monkeypatch):
    write_parquet(tmp_path / "a.parquet", [encode(rgb(0))])
    (spec,) = plan_shards(str(tmp_path), shard_size=10)
    monkeypatch.setattr(parquet_input, "iter_rows", _bug(TypeError))
    with pytest.raises(TypeError, match="a bug in sgcore"):
        decode_shard(spec, resize_size=8, crop_size=8)


def test_a_bug_in_reading_a_parquet_footer_propagates_at_planning(tmp_path, monkeypatch):
    write_parquet(tmp_path / "a.parquet", [encode(rgb(0))])
    monkeypatch.setattr(parquet_input, "inspect_file", _bug(AttributeError))
    with pytest.raises(AttributeError, match="a bug in sgcore"):
        plan_shards(str(tmp_path), shard_size=10)
