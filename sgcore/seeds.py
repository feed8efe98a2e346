"""Per-image seeds: derived from the run seed and the image id only.

That is what makes a map reproducible whatever shard, batch, actor or retry
produced it (docs/design.md contract 2).
"""

from __future__ import annotations

import hashlib


def image_seed(run_seed: int, image_id: str) -> int:
    """A 63-bit seed from (run seed, image id), stable across runs and machines."""
    digest = hashlib.blake2b(f"{int(run_seed)}\x00{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
