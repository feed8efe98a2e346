"""Bad inputs are refused at planning time with one line naming the input and the fix."""

import logging
import os
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgcore.errors import InputError
from sgcore.io import decode_shard, plan_shards
from sgcore.io.layouts import parquet as parquet_input
from tests.io.datasets import encode, rgb, tar_samples, write_tar


def _images(root, n=6):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img{i}.png").write_bytes(encode(rgb(i)))
    return root


def _table(root):
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": [encode(rgb(i)) for i in range(6)],
                             "name": [f"n{i}" for i in range(6)],
                             "label": ["a", "b"] * 3}), root / "data.parquet")
    return root


# ------------------------------------------------------------------ --id-column
def test_missing_id_column_is_refused_when_planning(tmp_path):
    root = _table(tmp_path / "t")
    with pytest.raises(InputError, match=r"^--id-column 'nosuchcol' is not in .*/t/data\.parquet; "
                                         r"columns: image, name, label$"):
        plan_shards(str(root), shard_size=10, id_column="nosuchcol")
    shards = plan_shards(str(root), shard_size=10, id_column="name")
    assert [r.image_id for r in decode_shard(shards[0], resize_size=8, crop_size=8).records] == [
        f"n{i}" for i in range(6)]


def test_id_column_message_is_the_same_when_reading(tmp_path):
    root = _table(tmp_path / "t")
    with open(root / "data.parquet", "rb") as f, pytest.raises(
            InputError, match=r"^--id-column 'uid' is not in x\.parquet; columns: image, name, label$"):
        next(parquet_input.iter_rows(f, row_groups=None, first_row=0, stop_row=None, image_column=None,
                                     label_column=None, id_column="uid", url="x.parquet"))


def test_parquet_with_id_column_failing_mid_read_keeps_one_row_per_image(tmp_path):
    root = _table(tmp_path / "t")
    (shard,) = plan_shards(str(root), shard_size=10, id_column="name")
    (root / "data.parquet").write_bytes(b"PAR1 gone")  # replaced after planning
    recs = decode_shard(shard, resize_size=8, crop_size=8).records
    assert [r.image_id for r in recs] == [f"data.parquet#{i}" for i in range(6)]
    assert all(r.error.startswith(f"cannot read {root}/data.parquet:") for r in recs)


# ----------------------------------------------------------------------- --labels
def test_labels_matching_no_image_is_refused(tmp_path):
    root = _images(tmp_path / "imgs")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nzzz.png,cat\nyyy.png,dog\n")
    with pytest.raises(InputError, match=re.escape(
            f"labels file {labels}: 0 of 6 image ids matched (file ids e.g. 'zzz.png', image ids e.g. "
            "'img0.png'); its path column must hold image ids or full URLs (path column 'path', label "
            "column 'label'; columns: path, label)")):
        plan_shards(str(root), shard_size=4, labels=str(labels))


def test_labels_with_unexpected_columns_name_the_columns_used(tmp_path):
    root = _images(tmp_path / "imgs")
    labels = tmp_path / "labels.csv"
    labels.write_text("species,fname\ncat,img0.png\n")  # label first, unknown names: guessed wrong
    with pytest.raises(InputError, match=r"0 of 6 image ids matched \(file ids e\.g\. 'cat', .*\(path column "
                                         r"'species', label column 'fname'; columns: species, fname\)$"):
        plan_shards(str(root), shard_size=4, labels=str(labels))
    labels.write_text("label,id\ncat,img0.png\n")  # 'id' is a known path column now
    shards = plan_shards(str(root), shard_size=10, labels=str(labels))
    assert shards[0].labels[0] == "cat"


def test_labels_matching_some_images_warn_with_the_count(tmp_path, caplog):
    root = _images(tmp_path / "imgs")
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,label\nimg0.png,cat\nimg3.png,dog\n0007,owl\n")
    with caplog.at_level(logging.WARNING, logger="sgcore"):
        shards = plan_shards(str(root), shard_size=10, labels=str(labels))
    assert shards[0].labels == ("cat", None, None, "dog", None, None)
    assert caplog.messages == [f"labels file {labels}: 2 of 6 image ids matched; the other 4 get no "
                               "label (e.g. 'img1.png')"]


def test_labels_matching_no_parquet_row_or_tar_sample_are_refused(tmp_path):
    table = _table(tmp_path / "t")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nzzz.png,cat\n")
    with pytest.raises(InputError, match=r"0 of 6 image ids matched \(file ids e\.g\. 'zzz\.png', image ids "
                                         r"e\.g\. 'data\.parquet#0'\)"):
        plan_shards(str(table), shard_size=10, labels=str(labels))
    labels.write_text("path,label\ndata.parquet#2,cat\n")
    assert len(plan_shards(str(table), shard_size=10, labels=str(labels))) == 1

    tars = tmp_path / "tars"
    write_tar(tars / "a.tar", tar_samples("s", 2))
    labels.write_text("path,label\nzzz.png,cat\n")
    with pytest.raises(InputError, match=r"0 of its 1 ids name a sample of the 1 \.tar shard\(s\) \(file ids "
                                         r"e\.g\. 'zzz\.png', image ids look like 'a\.tar/<sample key>'\)"):
        plan_shards(str(tars), shard_size=10, labels=str(labels))
    labels.write_text("path,label\na.tar/s0001,cat\n")
    assert len(plan_shards(str(tars), shard_size=10, labels=str(labels))) == 1


def test_labels_file_without_rows_is_refused(tmp_path):
    root = _images(tmp_path / "imgs")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n")
    with pytest.raises(InputError, match=r"0 of 6 image ids matched \(the file has no labelled rows, "):
        plan_shards(str(root), shard_size=4, labels=str(labels))


# ------------------------------------------------------------ --input a,b,...
def test_one_missing_url_of_a_list_is_refused(tmp_path):
    a = _images(tmp_path / "a", 2)
    nope = tmp_path / "nope"
    with pytest.raises(InputError, match=f"^input {re.escape(str(nope))} does not exist; check the URL and "
                                         "credentials$"):
        plan_shards(f"{a},{nope}", shard_size=4)
    with pytest.raises(InputError, match=f"^input {re.escape(str(nope))} does not exist; check the URL and "
                                         "credentials$"):
        plan_shards(str(nope), shard_size=4)
    (tmp_path / "empty").mkdir()  # an existing, empty folder is not an error
    assert plan_shards(f"{a},{tmp_path / 'empty'}", shard_size=4)[0].members == ("a/img0.png", "a/img1.png")


# ------------------------------------------------------------------ unique ids
def test_a_repeated_webdataset_key_gets_its_own_id_and_an_error_row(tmp_path):
    samples = tar_samples("s", 3)
    samples.append((samples[0][0], samples[1][1]))  # key s0000 again, not adjacent: a second sample
    write_tar(tmp_path / "wds" / "a.tar", samples)
    (shard,) = plan_shards(str(tmp_path / "wds"), shard_size=10)
    recs = decode_shard(shard, resize_size=8, crop_size=8).records
    ids = [r.image_id for r in recs]
    assert ids == ["a.tar/s0000", "a.tar/s0001", "a.tar/s0002", "a.tar/s0000#2"] and len(set(ids)) == 4
    assert [r.error is None for r in recs] == [True, True, True, False]
    assert re.match(r"sample key 's0000' repeats in .*/a\.tar \(occurrence 2, member s0000\.jpg\); "
                    r"WebDataset keys must be unique: only the first is used$", recs[3].error)


def test_an_id_column_with_repeated_values_is_refused_naming_them(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    pq.write_table(pa.table({"image": [encode(rgb(i)) for i in range(4)], "uid": ["x", "y", "x", "x"]}),
                   root / "data.parquet")
    with pytest.raises(InputError, match=r"^--id-column 'uid' repeats values: 'x' 3 times \(data\.parquet#0, "
                                         r"data\.parquet#2, data\.parquet#3\); 1 value\(s\) repeat in all\. "
                                         r"Image ids must be unique"):
        plan_shards(str(root), shard_size=10, id_column="uid")
    # Within --limit the ids are unique: that plan is fine.
    assert sum(s.size for s in plan_shards(str(root), shard_size=10, id_column="uid", limit=2)) == 2


def test_an_existing_folder_with_glob_characters_is_a_folder(tmp_path):
    root = _images(tmp_path / "weird[1]", n=3)
    (tmp_path / "weird1").mkdir()  # what the pattern would match: not this
    (tmp_path / "weird1" / "other.png").write_bytes(encode(rgb(9)))
    for url in (str(root), f"file://{root}"):
        (shard,) = plan_shards(url, shard_size=10)
        assert [r.image_id for r in decode_shard(shard, resize_size=8, crop_size=8).records] == [
            "img0.png", "img1.png", "img2.png"], url
    # A pattern that names no existing path is still a glob.
    (shard,) = plan_shards(str(tmp_path / "weird1" / "*[!x].png"), shard_size=10)
    assert shard.size == 1


# --------------------------------------------------------- input content identity
def test_a_shard_identity_follows_its_bytes_locally_and_on_s3(tmp_path, s3_server):
    s3fs = pytest.importorskip("s3fs")
    local = _images(tmp_path / "imgs", n=4)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("sgcore-content")
    for p in sorted(local.iterdir()):
        fs.pipe_file(f"sgcore-content/imgs/{p.name}", p.read_bytes())
    opts = {"skip_instance_cache": True}
    for url, replace in ((str(local), lambda name, data: (local / name).write_bytes(data)),
                         ("s3://sgcore-content/imgs", lambda name, data: fs.pipe_file(f"sgcore-content/imgs/{name}",
                                                                                      data))):
        first = plan_shards(url, shard_size=2, storage_options=opts)
        assert all(s.content for s in first) and len({s.content for s in first}) == 2, url
        assert [s.content for s in plan_shards(url, shard_size=2, storage_options=opts)] == [
            s.content for s in first], f"{url}: a listing of the same bytes gives the same identity"
        time.sleep(0.01)
        replace("img3.png", encode(rgb(99)))  # same name, other bytes (ETag on S3; mtime locally)
        if "://" not in url:
            os.utime(local / "img3.png", ns=(time.time_ns() + 10**9,) * 2)
        second = plan_shards(url, shard_size=2, storage_options=opts)
        assert second[0].content == first[0].content and second[1].content != first[1].content, url
