"""Storage: listing and reading inputs, decoding, writing results and manifests.

Never imports Ray: everything here runs the same in a Ray task or a plain process.
"""

from sgcore.io._fs import join, url_to_fs
from sgcore.io.decode import IMAGE_EXTENSIONS, DecodeError, Geometry, decode_image
from sgcore.io.manifest import (
    MANIFEST_NAME,
    SUCCESS_NAME,
    git_revision,
    has_success,
    package_versions,
    read_manifest,
    remove_success,
    write_manifest,
    write_success,
)
from sgcore.io.readers import (
    DecodedShard,
    RawSample,
    ShardSpec,
    decode_shard,
    plan_shards,
    read_shard,
)
from sgcore.io.writers import (
    PART_METADATA_KEY,
    encode_part,
    npz_name,
    part_name,
    part_url,
    read_part_metadata,
    result_schema,
    write_bytes,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_NAME",
    "PART_METADATA_KEY",
    "SUCCESS_NAME",
    "DecodeError",
    "DecodedShard",
    "Geometry",
    "RawSample",
    "ShardSpec",
    "decode_image",
    "decode_shard",
    "encode_part",
    "git_revision",
    "has_success",
    "join",
    "npz_name",
    "package_versions",
    "part_name",
    "part_url",
    "plan_shards",
    "read_manifest",
    "read_part_metadata",
    "read_shard",
    "remove_success",
    "result_schema",
    "url_to_fs",
    "write_bytes",
    "write_manifest",
    "write_success",
]
