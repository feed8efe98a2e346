"""Storage: listing and reading inputs, decoding, writing results and manifests.

Never imports Ray: everything here runs the same in a Ray task or a plain process.
"""

from sgcore.io._fs import join, open_input, read_bytes, url_to_fs
from sgcore.io._retry import (
    DEFAULT_POLICY,
    RetryPolicy,
    StorageAuthError,
    is_transient,
    retry_call,
    storage_auth_error,
)
from sgcore.io.decode import IMAGE_EXTENSIONS, DecodeError, Geometry, decode_array, decode_image
from sgcore.io.labels import read_labels
from sgcore.io.manifest import (
    MANIFEST_NAME,
    SUCCESS_NAME,
    git_revision,
    package_versions,
    read_manifest,
    remove_success,
    write_manifest,
    write_success,
)
from sgcore.io.readers import (
    INPUT_FORMATS,
    DecodedShard,
    RawSample,
    ShardSpec,
    decode_shard,
    plan_shards,
    read_shard,
    read_source,
)
from sgcore.io.writers import (
    GEOMETRY_COLUMNS,
    PART_METADATA_KEY,
    encode_part,
    npz_name,
    part_name,
    part_url,
    read_part_metadata,
    result_schema,
    rows_to_table,
    write_bytes,
)

__all__ = [
    "DEFAULT_POLICY",
    "GEOMETRY_COLUMNS",
    "IMAGE_EXTENSIONS",
    "INPUT_FORMATS",
    "MANIFEST_NAME",
    "PART_METADATA_KEY",
    "SUCCESS_NAME",
    "DecodeError",
    "DecodedShard",
    "Geometry",
    "RawSample",
    "RetryPolicy",
    "ShardSpec",
    "StorageAuthError",
    "decode_array",
    "decode_image",
    "decode_shard",
    "encode_part",
    "git_revision",
    "is_transient",
    "join",
    "npz_name",
    "open_input",
    "package_versions",
    "part_name",
    "part_url",
    "plan_shards",
    "read_bytes",
    "read_labels",
    "read_manifest",
    "read_part_metadata",
    "read_shard",
    "read_source",
    "remove_success",
    "result_schema",
    "retry_call",
    "rows_to_table",
    "storage_auth_error",
    "url_to_fs",
    "write_bytes",
    "write_manifest",
    "write_success",
]
