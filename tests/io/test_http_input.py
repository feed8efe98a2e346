"""http(s):// inputs: an index page or a list of URLs, read like any other store.

Before, the root became ``http://http://...`` and every read was retried as a
DNS error until the storage budget ran out (8 images: 8 min 28 s, 8 error rows).
A local ``http.server`` on 127.0.0.1 serves a folder of images with its index pages.
"""

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sgcore.errors import InputError
from sgcore.io import decode_image, decode_shard, plan_shards, read_shard, read_source
from sgcore.io._retry import RetryPolicy, set_default_policy
from tests.io.datasets import encode, rgb

pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem

NAMES = ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; answers 403 for a path with a ``<path>.deny`` file beside it, or under ``forbidden/``."""

    def _denied(self) -> bool:
        return "forbidden" in self.path or Path(self.translate_path(self.path).rstrip("/") + ".deny").exists()

    def do_GET(self) -> None:
        if self._denied():
            self.send_error(403)
        else:
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._denied():
            self.send_error(403)
        else:
            super().do_HEAD()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder): ``imgs/`` holds NAMES and a text file, ``forbidden/`` answers 403."""
    root = tmp_path / "www"
    for k, name in enumerate(NAMES):
        (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "imgs" / name).write_bytes(encode(rgb(k)))
    (root / "imgs" / "notes.txt").write_text("not an image: skipped")
    (root / "forbidden").mkdir()
    (root / "forbidden" / "a.png").write_bytes(encode(rgb(9)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The job's budget (120 s of retries): a read that were retried would show in the timings.
    previous = set_default_policy(RetryPolicy(attempts=1_000, base_delay=0.5, max_delay=2.0, max_elapsed=60.0))
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        set_default_policy(previous)
        server.shutdown()
        server.server_close()


def _decoded(root: Path, name: str) -> np.ndarray:
    return decode_image((root / "imgs" / name).read_bytes(), resize_size=16, crop_size=16)[0]


@pytest.mark.parametrize("slash", ["/", ""])
def test_an_index_page_is_planned_and_read_with_ids_relative_to_it(site, slash):
    base, root = site
    shards = plan_shards(f"{base}/imgs{slash}", shard_size=3)
    assert [s.root for s in shards] == [f"{base}/imgs"] * 2
    assert [m for s in shards for m in s.members] == NAMES
    records, images = [], []
    for s in shards:
        d = decode_shard(s, resize_size=16, crop_size=16)
        records += d.records
        images += list(d.images)
    assert [(r.image_id, r.source, r.label, r.error) for r in records] == [
        (n, f"{base}/imgs/{n}", n.split("/")[0], None) for n in NAMES]
    for n, arr in zip(NAMES, images, strict=True):
        np.testing.assert_array_equal(arr, _decoded(root, n))
    assert read_source(f"{base}/imgs/dog/1.png") == (root / "imgs" / "dog" / "1.png").read_bytes()


def test_a_list_of_urls_is_relative_to_their_common_folder(site):
    base, root = site
    (shard,) = plan_shards(f"{base}/imgs/dog/1.png, {base}/imgs/cat/0.png", shard_size=8)
    assert (shard.root, shard.members) == (f"{base}/imgs", ("cat/0.png", "dog/1.png"))
    samples = list(read_shard(shard))
    assert [(s.image_id, s.data) for s in samples] == [
        (n, (root / "imgs" / n).read_bytes()) for n in ("cat/0.png", "dog/1.png")]


def test_an_image_gone_after_planning_is_one_error_row_at_once(site):
    base, root = site
    (shard,) = plan_shards(f"{base}/imgs/", shard_size=8)
    (root / "imgs" / "cat" / "1.png").unlink()  # answered 404 now
    (root / "imgs" / "dog" / "0.png.deny").touch()  # answered 403 now
    start = time.monotonic()
    d = decode_shard(shard, resize_size=16, crop_size=16)
    elapsed = time.monotonic() - start
    errors = {r.image_id: r.error for r in d.records if r.error}
    assert errors == {
        "cat/1.png": f"cannot read {base}/imgs/cat/1.png: FileNotFoundError: {base}/imgs/cat/1.png",
        "dog/0.png": f"cannot read {base}/imgs/dog/0.png: ClientResponseError: 403, message='Forbidden', "
                     f"url='{base}/imgs/dog/0.png'",
    }
    assert d.num_ok == 3 and elapsed < 10, elapsed  # not retried (the budget here is 60 s)


@pytest.mark.parametrize("path, match", [
    ("/nothing-here/", r"^input {base}/nothing-here/ does not exist; check the URL and credentials$"),
    ("/forbidden/", r"^cannot list input {base}/forbidden/: ClientResponseError: 403, message='Forbidden'"),
    ("/imgs/cat/9.png", r"^input {base}/imgs/cat/9\.png does not exist; check the URL and credentials$"),
])
def test_what_cannot_be_listed_is_refused_at_once_in_one_line(site, path, match):
    base, _ = site
    start = time.monotonic()
    with pytest.raises(InputError, match=match.format(base=base)) as info:
        plan_shards(base + path, shard_size=8)
    assert "\n" not in str(info.value) and time.monotonic() - start < 10


def test_urls_on_two_hosts_are_refused(site):
    base, _ = site
    other = base.replace("127.0.0.1", "localhost")
    with pytest.raises(InputError, match=r"are on several hosts; HTTP\(S\) inputs must share one host"):
        plan_shards(f"{base}/imgs/cat/0.png,{other}/imgs/cat/1.png", shard_size=8)
