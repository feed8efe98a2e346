"""Planning at scale: the compact listing gives today's names, stamps, ids and plan, at a bounded cost per file."""

import io
import os
import pickle
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pytest

from sgcore.bench.scale import make_local_tree
from sgcore.io import listing, plan_shards
from sgcore.pipeline.driver import plan_fingerprint


def _names_type() -> type:
    from sgcore.io.layouts.names import Names

    return Names


def _general(monkeypatch: pytest.MonkeyPatch, url: str, **kwargs):
    """What the general listing (fsspec ``find``, as before the compact one) gives for ``url``."""
    with monkeypatch.context() as m:
        m.setattr(listing, "_list_folder", lambda *a: None)
        return listing.list_input(url, kwargs.get("storage_options")), plan_shards(url, **kwargs)


def _same_listing(fast, slow) -> None:
    assert isinstance(fast.names, _names_type()), "the folder was not listed compactly"
    assert list(fast.names) == list(slow.names)
    assert dict(fast.stamps) == dict(slow.stamps)
    assert (fast.root.path, fast.root.url, fast.shown) == (slow.root.path, slow.root.url, slow.shown)


def _same_plan(fast, slow) -> None:
    assert [(s.shard_id, tuple(s.members), s.content, s.count) for s in fast] == \
        [(s.shard_id, tuple(s.members), s.content, s.count) for s in slow]
    assert fast == slow
    assert plan_fingerprint(fast) == plan_fingerprint(slow)


def _tricky_tree(root: Path) -> Path:
    """Names whose sorted order a plain per-folder walk gets wrong, links, hidden and unicode names."""
    for rel in ("b.jpg", "b/x.jpg", "b-c/y.png", "b0.jpg", "a/deep/er/z.jpeg", ".hidden.jpg", ".dot/in.jpg",
                "sp ace/é.png", "Z.PNG", "notes.txt", "c/d/e/f.webp", "c/d.bmp"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * len(rel))
    (root / "empty").mkdir()
    os.symlink(root / "b.jpg", root / "link.jpg")
    os.symlink(root / "c", root / "dirlink.jpg")  # a link to a folder is a file to fsspec's find
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    return root


def test_local_folder_lists_and_plans_exactly_as_fsspec_find(tmp_path, monkeypatch):
    root = _tricky_tree(tmp_path / "in")
    slow_listing, slow_plan = _general(monkeypatch, str(root), shard_size=2)
    fast_listing = listing.list_input(str(root), None)
    _same_listing(fast_listing, slow_listing)
    assert list(fast_listing.names) == sorted(fast_listing.names)
    _same_plan(plan_shards(str(root), shard_size=2), slow_plan)
    # file:// URLs and a trailing slash list the same folder the same way
    for url in (f"file://{root}", f"{root}/"):
        _same_listing(listing.list_input(url, None), _general(monkeypatch, url, shard_size=2)[0])
    limited = plan_shards(str(root), shard_size=3, limit=4)
    assert limited == _general(monkeypatch, str(root), shard_size=3, limit=4)[1]


def test_a_planned_shard_is_a_range_that_travels_as_a_tuple(tmp_path):
    root = make_local_tree(tmp_path / "in", 50, per_folder=20)
    shards = plan_shards(str(root), shard_size=16)
    spec = shards[1]
    assert isinstance(spec.members, _names_type()) and len(spec.members) == 16
    assert spec.members == tuple(f"c{i // 20:05d}/{i:08d}.jpg" for i in range(16, 32))
    assert spec.members[0] == "c00000/00000016.jpg" and spec.members[-1] == "c00001/00000031.jpg"
    sent = pickle.loads(pickle.dumps(spec))  # what a decode task receives
    assert type(sent.members) is tuple and sent == spec and hash(sent) == hash(spec)
    # only the shard's names travel, not the table of the whole listing
    assert len(pickle.dumps(spec)) < 2000


def test_planning_holds_no_python_object_per_file(tmp_path):
    """Driver memory: a few bytes per planned file once planned, and a bounded peak while listing."""
    n = 10_000
    root = make_local_tree(tmp_path / "in", n)
    plan_shards(str(root), shard_size=256)  # first-call imports and caches
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        shards = plan_shards(str(root), shard_size=256)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrow = pa.total_allocated_bytes() - arrow_before
    assert sum(s.size for s in shards) == n
    # Before: the plan kept a str per file (~90 B) and listing peaked at ~1 KB per file.
    assert held / n < 20, f"{held / n:.0f} B of Python objects held per planned file"
    assert peak / n < 400, f"{peak / n:.0f} B per file at the listing's peak"
    assert arrow / n < 120, f"{arrow / n:.0f} B of Arrow memory per file"


def _best_seconds(url: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()  # CPU time: on a shared machine the wall clock measures the neighbours too
        plan_shards(url, shard_size=256)
        best = min(best, time.process_time() - t0)
    return best


def test_planning_cost_per_file_does_not_grow(tmp_path):
    """The scale benchmark at CI size: 10^4 files cost at most a small factor more per file than 10^3."""
    small = make_local_tree(tmp_path / "small", 1_000)
    large = make_local_tree(tmp_path / "large", 10_000)
    _best_seconds(str(small), 1)
    per_small = _best_seconds(str(small)) / 1_000
    per_large = _best_seconds(str(large)) / 10_000
    # Linear planning gives ~1x (fixed costs make 10^3 dearer per file); a quadratic step gives ~10x.
    assert per_large < 3 * per_small, f"{per_large * 1e6:.1f} us per file at 10^4 vs {per_small * 1e6:.1f} at 10^3"


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_tree(s3_server) -> str:
    """A bucket with a few hundred keys in nested folders, and the traps of sorted order."""
    s3fs = pytest.importorskip("s3fs")
    bucket = "sgcore-scale"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(bucket)
    keys = [f"data/c{c:02d}/{i:03d}.jpg" for c in range(12) for i in range(25)]
    keys += [f"data/c{c:02d}/sub/{i}.png" for c in range(3) for i in range(4)]
    keys += ["data/top.jpg", "data/b.jpg", "data/b/x.jpg", "data/b-c/y.jpg", "data/é/ü.jpg", "data/notes.txt",
             "data/c03/", "data/", "other/out.jpg", "data.jpg"]
    fs.pipe({f"{bucket}/{k}": k.encode() for k in keys})
    return bucket


def test_s3_prefix_lists_in_parallel_exactly_as_find(s3_tree, monkeypatch):
    from sgcore.io import _tree

    opts = {"skip_instance_cache": True}
    url = "s3://sgcore-scale/data"
    slow_listing, slow_plan = _general(monkeypatch, url, shard_size=32, storage_options=opts)
    assert len(slow_listing.names) > 300
    monkeypatch.setattr(_tree, "PROGRESS_EVERY_S", 0.0)  # every page prints: the line is seen at once
    monkeypatch.setattr(_tree, "_S3_FANOUT", 8)  # 15 sub-prefixes are enough: each is then listed whole
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    fast_listing = listing.list_input(url, opts)
    _same_listing(fast_listing, slow_listing)
    stats = _tree.last_stats
    # one delimiter listing of data/, then its 15 sub-prefixes each listed whole, several at once
    assert stats.prefixes == 15 and stats.prefixes_done == 15 and stats.requests == 16, stats
    assert stats.max_in_flight > 1, stats
    assert stats.keys == len(slow_listing.names)
    assert f"[sgcore] listing {url}: " in err.getvalue() and "keys so far" in err.getvalue()
    _same_plan(plan_shards(url, shard_size=32, storage_options=opts), slow_plan)
    monkeypatch.undo()  # by default the fan-out goes down to the last level here: the same names
    for trailing in (url, f"{url}/", "s3://sgcore-scale/data/c00"):
        _same_listing(listing.list_input(trailing, opts), _general(monkeypatch, trailing, shard_size=8,
                                                                   storage_options=opts)[0])


def test_s3_file_glob_and_missing_prefix_keep_the_general_listing(s3_tree):
    from sgcore.errors import InputError

    opts = {"skip_instance_cache": True}
    one = listing.list_input("s3://sgcore-scale/data/top.jpg", opts)
    assert list(one.names) == ["top.jpg"] and not isinstance(one.names, _names_type())
    globbed = listing.list_input("s3://sgcore-scale/data/c0*/0*.jpg", opts)
    assert len(globbed.names) == 10 * 25
    with pytest.raises(InputError, match="does not exist"):
        listing.list_input("s3://sgcore-scale/nothing", opts)


class _FakeS3:
    """ListObjectsV2 over a sorted key list, with S3's rules: Prefix, StartAfter, MaxKeys, Delimiter, tokens."""

    req_kw: dict = {}

    def __init__(self, keys):
        self.keys = sorted(set(keys), key=lambda k: k.encode())
        self.calls = []
        self.sent = 0  # keys in the responses

    async def _call_s3(self, method, **kw):
        import asyncio

        assert method == "list_objects_v2"
        self.calls.append(kw)
        await asyncio.sleep(0)  # other requests go out meanwhile, as over a network
        prefix, delim = kw.get("Prefix", ""), kw.get("Delimiter")
        after = kw.get("ContinuationToken", kw.get("StartAfter"))
        contents, prefixes, last = [], [], None
        for k in self.keys:
            if not k.startswith(prefix) or (after is not None and k.encode() <= after.encode()):
                continue
            rest = k[len(prefix):]
            if delim and delim in rest:
                cp = prefix + rest.split(delim)[0] + delim
                if prefixes and prefixes[-1] == cp:
                    continue
                entry = ("cp", cp)
            else:
                entry = ("key", k)
            if len(contents) + len(prefixes) == kw.get("MaxKeys", 1000):
                # the token skips a whole common prefix, as S3's does
                tok = last + "\U0010ffff" * 4 if last and last.endswith(delim or "\0") else last
                self.sent += len(contents)
                return {"Contents": contents, "CommonPrefixes": [{"Prefix": p} for p in prefixes],
                        "IsTruncated": True, "NextContinuationToken": tok}
            if entry[0] == "cp":
                prefixes.append(cp)
            else:
                contents.append({"Key": k, "Size": len(k), "ETag": f'"{len(k)}"'})
            last = entry[1]
        self.sent += len(contents)
        return {"Contents": contents, "CommonPrefixes": [{"Prefix": p} for p in prefixes], "IsTruncated": False}


def _fan_out(keys, prefix, monkeypatch, page=7):
    import asyncio

    from sgcore.io import _tree

    monkeypatch.setattr(_tree, "S3_PAGE", page)
    fs = _FakeS3(keys)
    stats = _tree.ListingStats()
    chunks = asyncio.run(_tree._fan_out(fs, "b", prefix, lambda p: p.split("/", 1)[1], lambda info: info["ETag"],
                                        stats, 4, "s3://b/" + prefix, io.StringIO()))
    listed = [n for c in chunks for n in c[0].to_pylist()]
    return listed, stats, fs


@pytest.mark.parametrize("kind", ["decimal", "hex", "odd"])
def test_a_flat_prefix_is_listed_as_key_ranges_exactly_once(kind, monkeypatch):
    """A prefix of many keys and no folders: ranges after the first page, every key exactly once."""
    import random

    rnd = random.Random(kind)
    if kind == "decimal":
        names = [f"{i:06d}.jpg" for i in range(3000)]
    elif kind == "hex":
        names = [f"{rnd.getrandbits(40):010x}" for _ in range(2000)]
    else:  # every trap of the boundaries: keys equal to a boundary, gaps, unicode, the top code point
        alphabet = "0123456789:;.-_ ~aAfFgzZé中\U0010ffff\ufffd\x7f%#?+"
        names = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6))) for _ in range(2500)]
        names += ["0", "00", "000", "001", "0010", "01", "0:", "0\U0010ffff", "0\U0010ffffa", "9", ":", "", "a/b"]
    keys = [f"data/{n}" for n in names] + ["dat", "data", "datb/x", "other/0"]
    page = 10 if kind == "decimal" else 7  # decimal: a page is a block of names, as 1,000 is on S3
    listed, stats, fs = _fan_out(keys, "data/", monkeypatch, page=page)
    want = sorted(f"data/{n}" for n in set(names))
    assert sorted(listed) == want and len(listed) == len(want)  # exactly once
    assert stats.keys == len(want)
    # the rest after the first page went out as parallel ranges, not one chain of pages
    assert stats.prefixes > 5 and stats.max_in_flight > 1, stats
    pages = -(-len(want) // page)
    assert stats.requests < 3 * pages + 60, (stats.requests, pages)
    if kind == "decimal":  # numbered names: the ranges are plain prefixes, one request per page, no key sent twice
        assert stats.requests < 1.5 * pages, (stats.requests, pages)
        assert fs.sent <= len(want) + 60, fs.sent


def test_key_ranges_cover_the_rest_of_a_prefix_without_overlap():
    from sgcore.io._tree import key_ranges

    page = [f"data/{i:04d}" for i in range(100, 107)]
    ranges = key_ranges("data/", page)
    universe = [f"data/{a}{b}{c}{d}" for a in "0159:a" for b in "0239" for c in "06" for d in "0\U0010ffff"]
    universe += ["data/", "data/0", "data/01", "data/0107", "data/1", "data/:", "data/\U0010ffff", "data/01:"]
    for key in universe:
        holders = [r for r in ranges if key.startswith(r.prefix) and r.holds(key)
                   and (r.after is None or key > r.after)]
        assert len(holders) == (1 if key > page[-1] else 0), (key, holders)


def test_s3_flat_prefix_lists_as_parallel_key_ranges_exactly_as_find(s3_server, monkeypatch):
    """A folder of many keys and no sub-folders, on the moto server: the same listing as find, in parallel ranges."""
    s3fs = pytest.importorskip("s3fs")
    from sgcore.io import _tree

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("sgcore-flat")
    names = [f"{i:05d}.jpg" for i in range(230)] + ["00007.jpg.txt", "0001:", "0002 x.jpg", "0009é.png", "0a.jpg",
                                                     "00100\U0001f600.jpg", "0~", "1%2F#?.jpg", "z"]
    fs.pipe({f"sgcore-flat/flat/{n}": b"" for n in names} | {"sgcore-flat/flatter/x.jpg": b""})
    opts = {"skip_instance_cache": True}
    url = "s3://sgcore-flat/flat"
    slow_listing, slow_plan = _general(monkeypatch, url, shard_size=16, storage_options=opts)
    assert len(slow_listing.names) == len(names)
    monkeypatch.setattr(_tree, "S3_PAGE", 10)
    fast_listing = listing.list_input(url, opts)
    _same_listing(fast_listing, slow_listing)
    stats = _tree.last_stats
    assert stats.keys == len(names) and stats.prefixes > 5 and stats.max_in_flight > 1, stats
    assert stats.requests < 3 * len(names) / 10 + 20, stats  # 24 pages, and the probes of empty ranges
    _same_plan(plan_shards(url, shard_size=16, storage_options=opts), slow_plan)
