"""The jobs share their flags: same help, same defaults as the configs, same one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import importlib

import pytest

from sgcore.cli import config_from_args, parse_storage_options
from sgcore.config import JobConfig
from sgcore.errors import ConfigError

JOBS = ("smoothgrad", "audit", "sweep", "benchmark", "submit", "gpu_check", "train_demo", "photos")
SECRET = "SUPERSECRET123"


def _parser(job: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"jobs.{job}").build_parser()


@pytest.mark.parametrize("job", JOBS)
def test_help_gives_every_option_a_text_and_its_default(job):
    parser = _parser(job)
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        assert action.help, f"{job}: {flag} has no help text"
        shown = parser._get_formatter()._get_help_string(action) % {"default": action.default}
        if isinstance(action.default, bool):
            continue  # an on/off flag
        # A default is shown, or (for None) the help says what happens without the flag.
        assert "default" in shown, f"{job}: {flag} does not show its default: {shown!r}"
        if action.default not in (None, [], ()):
            value = action.default
            value = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            assert f"default: {value}" in shown, f"{job}: {flag}: {shown!r}"
    assert "%(default)" not in text


def test_audit_flags_say_what_they_skip_and_what_costs():
    helps = {a.option_strings[0]: a.help for a in _parser("audit")._actions if a.option_strings}
    for flag in ("--no-sanity", "--no-faithfulness", "--no-localization", "--seed"):
        assert helps[flag] and len(helps[flag].split()) > 3, f"{flag} has no help: {helps[flag]!r}"
    assert "costliest" in helps["--no-sanity"] and "n-samples" in helps["--no-sanity"]
    assert "costly" in helps["--no-faithfulness"] and "cheap" in helps["--no-localization"]


@pytest.mark.parametrize(("job", "cls", "required"), [
    ("smoothgrad", "sgcore.config:JobConfig", {"input": "i", "output": "o"}),
    ("audit", "sgcore.audit:AuditConfig", {"results": "r", "report": "o"}),
    ("sweep", "sgcore.audit:SweepConfig", {"report": "o", "results": "r"}),
])
def test_parser_defaults_are_the_configs_defaults(job, cls, required):
    module, name = cls.split(":")
    config_cls = getattr(importlib.import_module(module), name)
    parser = _parser(job)
    built = config_from_args(config_cls, parser.parse_args([]), **required)
    assert built == config_cls(**required)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for action in parser._actions:
        if action.dest in fields and action.dest not in required and action.default is not None:
            assert action.default == getattr(config_cls(**required), action.dest), action.dest


def test_sweep_help_states_the_grid_defaults():
    from sgcore.audit import sweep

    text = " ".join(_parser("sweep").format_help().split())
    for values in (sweep.DEFAULT_NOISE_LEVELS, sweep.DEFAULT_SAMPLE_COUNTS, sweep.DEFAULT_CONVERGENCE_COUNTS):
        assert "(default: " + ",".join(f"{v:g}" for v in values) + ")" in text


@pytest.mark.parametrize(("text", "message"), [
    ('{"key": "AKIAFAKE", "secret": "' + SECRET + '",}', r"not valid JSON \(Expecting property name"),
    ('{"secret": "' + SECRET + '"', r"not valid JSON"),
    ("'" + SECRET + "'", r"not valid JSON"),
    ('"' + SECRET + '"', r"got a JSON string"),
    ('["' + SECRET + '"]', r"got a JSON array"),
    ("[1]", r"got a JSON array"),
    ("1", r"got a JSON number"),
])
def test_malformed_storage_options_never_echo_the_value(text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        parse_storage_options(text)
    assert SECRET not in str(exc.value) and "AKIAFAKE" not in str(exc.value)
    assert str(exc.value).startswith("--storage-options must be a JSON object")


def test_storage_options_parse_to_the_config():
    args = argparse.Namespace(input="i", output="o", storage_options='{"anon": true}', n_samples=None)
    assert config_from_args(JobConfig, args).storage_options == {"anon": True}
    assert config_from_args(JobConfig, argparse.Namespace(input="i", output="o")).storage_options == {}


BAD_OPTIONS = [
    '{"key": "AKIAFAKE", "secret": "' + SECRET + '",}',  # malformed JSON
    '["' + SECRET + '"]',  # not an object
    '{"bogus_option": "' + SECRET + '"}',  # unknown to the backend
    '{"client_kwargs": "' + SECRET + '"}',  # wrong type
    '{"endpoint_url": ["' + SECRET + '"]}',  # wrong type
]


@pytest.mark.parametrize("options", BAD_OPTIONS)
@pytest.mark.parametrize("job", ["smoothgrad", "audit", "sweep"])
def test_bad_storage_options_are_one_line_exit_2_without_the_secret(job, options, capsys, tmp_path):
    pytest.importorskip("s3fs")
    module = importlib.import_module(f"jobs.{job}")
    argv = {
        "smoothgrad": ["--input", "s3://sgcore-no-bucket/in", "--output", str(tmp_path / "out")],
        "audit": ["--results", "s3://sgcore-no-bucket/out", "--report", str(tmp_path / "report")],
        "sweep": ["--results", "s3://sgcore-no-bucket/out", "--report", str(tmp_path / "report")],
    }[job]
    assert module.main([*argv, "--storage-options", options]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: --storage-options "), captured.err
    assert SECRET not in captured.err + captured.out and "AKIAFAKE" not in captured.err + captured.out
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()
