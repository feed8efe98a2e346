"""JobConfig's choices match the modules that own them; the config stays light and secret-free."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from typing import get_args

import pytest

from sgcore import config, settings
from sgcore.config import JobConfig
from sgcore.errors import ConfigError


def test_each_choice_has_one_owner():
    # import_module: the package attribute `smoothgrad` is the function, not the module.
    sg = importlib.import_module("sgcore.attribution.smoothgrad")
    postprocess = importlib.import_module("sgcore.attribution.postprocess")
    noise = importlib.import_module("sgcore.attribution._noise")
    sanity = importlib.import_module("sgcore.audit.sanity")
    readers = importlib.import_module("sgcore.io.readers")

    # The kernel, the job's config and the audit share the torch-free objects.
    assert sg.AGGREGATES is settings.AGGREGATES and sg.Aggregate is settings.Aggregate
    assert sg.BASES is settings.BASES and sg.Base is settings.Base
    assert sg.PRECISIONS is settings.PRECISIONS and sg.Precision is settings.Precision
    assert sg.NOISES is noise.NOISE_KINDS is settings.NOISES and sg.Noise is settings.Noise
    assert postprocess.REDUCTIONS is settings.REDUCTIONS and postprocess.Reduction is settings.Reduction
    assert settings.AGGREGATES == get_args(settings.Aggregate) == ("mean", "square", "var")
    assert settings.REDUCTIONS == ("abs_sum", "sum", "max_abs")
    assert issubclass(JobConfig, settings.SmoothGradSettings)
    assert issubclass(sanity.MapSettings, settings.SmoothGradSettings)
    assert config.INPUT_FORMATS == readers.INPUT_FORMATS == get_args(config.InputFormat)
    assert get_args(config.OutputFormat) == config.OUTPUT_FORMATS
    assert get_args(config.Target) == config.TARGETS


def test_kernel_arguments_are_the_kernels_keywords():
    sg = importlib.import_module("sgcore.attribution.smoothgrad")
    keywords = set(inspect.signature(sg.smoothgrad).parameters) - {"model", "images", "targets", "seeds"}
    args = JobConfig(input="i", output="o", n_samples=7, noise="sobol", ig_steps=3, max_batch=5).kernel_arguments()
    # Every kernel keyword comes from the settings, with the config's values, but the IG
    # baseline, what the call returns (the maps alone, or with their reliability) and the progress callback.
    assert set(args) == keywords - {"ig_baseline", "return_reliability", "reliability_reduction", "on_done"}
    assert (args["n_samples"], args["noise"], args["ig_steps"], args["max_batch"]) == (7, "sobol", 3, 5)


@pytest.mark.parametrize(("values", "message"), [
    ({"n_samples": 0}, r"n_samples must be a positive integer; got 0"),
    ({"n_samples": True}, r"n_samples must be a positive integer; got True"),
    ({"ig_steps": 2.5}, r"ig_steps must be a positive integer; got 2.5"),
    ({"max_batch": 0}, r"max_batch must be a positive integer; got 0"),
    ({"limit": -1}, r"limit must be a positive integer; got -1"),
    ({"noise_level": 1.5}, r"noise_level must be in \[0, 1\]; got 1.5"),
    ({"noise_level": "0.1"}, r"noise_level must be in \[0, 1\]; got 0.1"),
    ({"max_error_rate": -0.1}, r"max_error_rate must be in \[0, 1\]; got -0.1"),
    ({"max_retries": -1}, r"max_retries must be >= 0; got -1"),
    ({"aggregate": "median"}, r"aggregate must be one of mean, square, var; got 'median'"),
    ({"reduction": "l2"}, r"reduction must be one of abs_sum, sum, max_abs; got 'l2'"),
    ({"target": "best"}, r"target must be predicted, label or class:NAME_OR_INDEX; got 'best'"),
    ({"format": "csv"}, r"format must be one of parquet, npz; got 'csv'"),
    ({"output": " "}, r"output must be a non-empty URL or path; got ' '"),
])
def test_bad_settings_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        JobConfig(**{"input": "i", "output": "o", **values})


def test_default_config_hash_is_stable():
    # Resume compares this hash with the one of the committed parts: moving the
    # map settings into their own type must not change it.
    assert JobConfig(input="s3://b/in", output="s3://b/out").config_hash() == "5b9f4bc2b6ca35b1"


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


def test_input_formats_come_from_the_layouts_table():
    # A layout added to the table is an --input-format choice, with no second list to edit.
    code = ("import sgcore.input_formats as t; t.LAYOUT_CLASSES['zarr'] = 'acme:Zarr'; "
            "import sgcore.config as c; print(c.INPUT_FORMATS, c.JobConfig(input='i', output='o', "
            "input_format='zarr').input_format)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "('auto', 'images', 'webdataset', 'parquet', 'zarr') zarr"
