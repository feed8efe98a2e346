"""cluster.yaml passes Ray's own cluster-launcher schema and keeps its promises.

Pure schema validation: no network, no AWS credentials.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_schema(raw):
    # What `ray up` does before it talks to AWS: fill defaults, then validate.
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)


def test_the_schema_check_does_reject_a_broken_config(raw):
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_g5"]["min_workerz"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_workerz"):
        validate_config(prepare_config(broken))
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


def test_gpu_worker_types_for_cost_and_speed(raw):
    types = raw["available_node_types"]
    instance = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    gpu_types = {n for n, i in instance.items() if re.match(r"(g5|g6|p4d|p5)\.", i)}
    assert {"gpu_g5", "gpu_g6", "gpu_p4d", "gpu_p5"} <= gpu_types
    for name in gpu_types:
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"]
    assert sum(types[n]["min_workers"] for n in gpu_types) >= 1  # a job can start at once
    head = types[raw["head_node_type"]]
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"])
    assert head["resources"] == {"CPU": 0}


def test_token_auth_and_loopback_dashboard(raw):
    head = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "--num-cpus=0" in head
    worker = " ".join(raw["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379" in worker
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_installs_this_project_and_ships_no_venv_or_data(raw):
    assert raw["file_mounts"]["~/sgcore"] == "."
    assert any("pip install" in c and "~/sgcore" in c for c in raw["setup_commands"])
    for path in ("/.venv", "/.git", "/data", "/outputs"):
        assert path in raw["rsync_exclude"]


def test_docker_images_match_the_installed_ray(raw):
    for key in ("image", "head_image"):
        tag = raw["docker"][key].split(":", 1)[1]
        assert tag.startswith(ray.__version__ + "-"), (raw["docker"][key], ray.__version__)


def test_fields_a_user_must_change_are_marked():
    text = CLUSTER_YAML.read_text()
    for field in ("region:", "availability_zone:", "ssh_private_key:", "ImageId:",
                  "InstanceType:", "IamInstanceProfile:", "image:"):
        lines = [ln for ln in text.splitlines() if field in ln]
        assert lines and all("CHANGE" in ln for ln in lines), (field, lines)
