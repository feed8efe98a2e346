"""JobConfig's choices match the modules that own them; the config stays light and secret-free."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import get_args

from sgcore import config
from sgcore.config import JobConfig


def test_choices_equal_their_owners():
    # import_module: the package attribute `smoothgrad` is the function, not the module.
    sg = importlib.import_module("sgcore.attribution.smoothgrad")
    postprocess = importlib.import_module("sgcore.attribution.postprocess")
    readers = importlib.import_module("sgcore.io.readers")

    assert config.INPUT_FORMATS == readers.INPUT_FORMATS
    assert config.AGGREGATES == sg.AGGREGATES == get_args(sg.Aggregate)
    assert config.BASES == sg.BASES == get_args(sg.Base)
    assert config.PRECISIONS == sg.PRECISIONS == get_args(sg.Precision)
    assert config.NOISES == sg.NOISES == get_args(sg.Noise)
    assert config.REDUCTIONS == postprocess.REDUCTIONS == get_args(postprocess.Reduction)
    assert get_args(config.InputFormat) == config.INPUT_FORMATS
    assert get_args(config.OutputFormat) == config.OUTPUT_FORMATS
    assert get_args(config.Target) == config.TARGETS


def test_config_import_pulls_no_heavy_package():
    # Why the choices are copied rather than imported: a laptop that only submits jobs.
    code = ("import sys, sgcore.config; "
            "print([m for m in ('torch', 'ray', 'PIL', 'pyarrow', 'fsspec') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_storage_options_stay_out_of_hash_manifest_dict_and_repr():
    secret = "cfg-secret-51d2"
    plain = JobConfig(input="s3://b/in", output="s3://b/out")
    with_secret = JobConfig(input="s3://b/in", output="s3://b/out",
                            storage_options={"key": "k", "secret": secret})
    assert with_secret.config_hash() == plain.config_hash()
    assert "storage_options" not in with_secret.result_fields()
    assert secret not in json.dumps(with_secret.public_dict(), default=str)
    assert secret not in repr(with_secret)
