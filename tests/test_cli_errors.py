"""Jobs turn user errors into one line on stderr and exit 2 (run_cli), never a traceback."""

import pytest
import torch

from sgcore.cli import run_cli


def _raises(exc):
    def job():
        raise exc
    return job


def test_run_cli_maps_unwrapped_credential_errors_to_exit_2(capsys):
    exceptions = pytest.importorskip("botocore.exceptions")
    assert run_cli(_raises(exceptions.NoCredentialsError())) == 2
    assert capsys.readouterr().err == (
        "error: no AWS credentials to access storage: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a "
        "profile (AWS_PROFILE), or --storage-options '{\"key\": ..., \"secret\": ...}'\n")


def test_run_cli_storage_failure_is_exit_1_and_bugs_still_raise(capsys):
    assert run_cli(_raises(OSError("read s3://b/k: still failing after 5 attempts"))) == 1
    assert capsys.readouterr().err == "error: storage failure: read s3://b/k: still failing after 5 attempts\n"
    with pytest.raises(ZeroDivisionError):
        run_cli(_raises(ZeroDivisionError("a bug keeps its traceback")))


@pytest.mark.parametrize(("argv", "line"), [
    (["--batch", "0"], "error: --batch must be >= 1; got 0"),
    (["--n-samples", "0"], "error: --n-samples must be >= 1; got 0"),
    (["--repeats", "-1"], "error: --repeats must be >= 1; got -1"),
    (["--images", "0", "--mode", "pipeline"], "error: --images must be >= 1; got 0"),
    (["--image-size", "0"], "error: --image-size must be >= 2; got 0"),
    (["--device", "gpu0"], "error: --device must be auto, cpu, cuda or cuda:N; got 'gpu0'"),
    (["--device", "mps"], "error: --device must be auto, cpu, cuda or cuda:N; got 'mps'"),
    (["--model", "resnet5O", "--n-samples", "1", "--repeats", "1"], "error: unknown model 'resnet5O'; did you mean"),
])
def test_benchmark_bad_arguments_exit_2_with_one_line(capsys, tmp_path, argv, line):
    from jobs import benchmark

    assert benchmark.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_benchmark_cuda_without_a_gpu_exits_2(capsys, tmp_path, device):
    from jobs import benchmark

    assert benchmark.main(["--device", device, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: --device {device}: no CUDA GPU is visible here; use --device "
                                       "cpu (or auto)\n")


def test_benchmark_without_captum_stops_before_timing(capsys, tmp_path, monkeypatch):
    import importlib.util

    from jobs import benchmark

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    assert benchmark.main(["--n-samples", "1", "--repeats", "1", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: the Captum baseline needs captum")
    assert not any(tmp_path.iterdir())
    # --no-captum times the rest (the fidelity mode never needs it).
    assert benchmark.main(["--no-captum", "--no-loop", "--image-size", "16", "--batch", "1", "--n-samples", "1",
                           "--repeats", "1", "--out", str(tmp_path)]) == 0
    table = next(tmp_path.glob("speed-*.md")).read_text()
    assert "sgcore fp32, prepared" in table and "captum" not in table


def test_sigterm_is_one_line_and_exit_143(capsys):
    import signal

    from sgcore.errors import Stopped

    assert run_cli(_raises(Stopped(signal.SIGTERM))) == 143
    assert capsys.readouterr().err == (
        "stopped by SIGTERM; rerun the same command to resume (committed shards are kept)\n")
