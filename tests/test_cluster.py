"""Cluster files: the launcher YAMLs pass Ray's own schema and config checks (what `ray up`
runs before it touches a cloud), the KubeRay manifests have what the operator requires, and
every Serve config, embedded or not, passes Serve's deploy schema."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from genray.submit import load_spec

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = ["cluster/aws-gpu.yaml", "cluster/local.yaml"]
KUBERAY = {"RayCluster": "cluster/kuberay/raycluster.yaml", "RayJob": "cluster/kuberay/rayjob.yaml",
           "RayService": "cluster/kuberay/rayservice.yaml"}


def load(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


@pytest.mark.parametrize("path", LAUNCHER)
def test_launcher_yaml_passes_rays_schema_and_checks(path):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    raw = load(path)
    jsonschema.validate(raw, schema)
    # What `ray up` does first: merge the provider's defaults, then validate again.
    validate_config(prepare_config(copy.deepcopy(raw)))


def test_aws_cluster_has_a_cpu_head_and_autoscaling_gpu_workers():
    config = prepare_config(copy.deepcopy(load("cluster/aws-gpu.yaml")))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["node_config"]["InstanceType"]
    assert not head.startswith(("g", "p")), f"the head should be a CPU instance, got {head}"
    gpu_types = {name: t for name, t in types.items() if t["node_config"]["InstanceType"].startswith(("g5", "p"))}
    assert gpu_types, "no GPU worker type"
    for name, t in gpu_types.items():
        assert t["min_workers"] == 0 < t["max_workers"], f"{name} does not scale from zero"
    commands = " ".join(config["setup_commands"])
    assert "pip install" in commands and "~/genray" in commands, "setup must install genray"
    assert config["file_mounts"]["~/genray"] == "."
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:])


def test_local_cluster_lists_its_machines():
    provider = load("cluster/local.yaml")["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]


def ray_cluster_spec(doc: dict) -> dict:
    kind = doc["kind"]
    return doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"]


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_manifest_has_the_required_fields(kind):
    doc = load(KUBERAY[kind])
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    spec = ray_cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        assert isinstance(group.get("rayStartParams", {}), dict), name
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers), name
        env = {e["name"]: e for e in containers[0].get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env, f"{name}: token auth off"
    for name, group in groups[1:]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name


def test_rayjob_runs_a_job_spec_through_the_entrypoint():
    spec = load(KUBERAY["RayJob"])["spec"]
    args = spec["entrypoint"].split()
    assert args[:2] == ["python", "jobs/train.py"]
    assert (REPO / args[1]).is_file()
    job = load_spec(REPO / args[2])  # the spec exists and its run config validates
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert job.gpus_per_worker == 1 and workers["maxReplicas"] >= job.workers
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    submitter_env = {e["name"] for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert "RAY_AUTH_TOKEN" in submitter_env


def test_rayservice_embeds_the_serve_configs():
    embedded = yaml.safe_load(load(KUBERAY["RayService"])["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    for app in embedded["applications"]:
        original = load(f"serve/{app['name']}.yaml")["applications"][0]
        # The two cluster changes: the model store is on S3, HTTP is not loopback-only.
        if "model" in original["args"]:
            assert app["args"]["model"].startswith("s3://")
            app = {**app, "args": {**app["args"], "model": original["args"]["model"]}}
        assert app == original, f"{app['name']}: RayService differs from serve/{app['name']}.yaml"
    assert embedded["http_options"]["host"] == "0.0.0.0"


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "serve").glob("*.yaml")))
def test_serve_configs_declare_autoscaling_and_resources(path):
    config = yaml.safe_load((REPO / "serve" / path).read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks
    assert config["applications"] and all(app["deployments"] for app in config["applications"]), \
        "no deployment declared: the checks below would pass vacuously"
    for app in config["applications"]:
        for deployment in app["deployments"]:
            scaling = deployment["autoscaling_config"]
            assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"], deployment["name"]
            assert 0 < scaling["target_ongoing_requests"] <= deployment["max_ongoing_requests"]
            assert "num_replicas" not in deployment, "autoscaling decides the replica count"
            assert {"num_cpus", "num_gpus"} <= set(deployment["ray_actor_options"])


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "jobs").glob("*.yaml")))
def test_job_specs_validate(path):
    spec = load_spec(REPO / "jobs" / path)
    assert (REPO / "jobs" / spec.entrypoint).is_file()
    cfg = spec.run_config()
    assert cfg.train.workers == spec.workers and cfg.train.use_gpu == (spec.gpus_per_worker > 0)


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "serve").glob("*.yaml")))
def test_no_access_log_config_is_still_a_valid_serve_config(path):
    from genray.serve_config import with_access_log

    config = yaml.safe_load((REPO / "serve" / path).read_text())
    quiet = with_access_log(config, False)
    parsed = ServeDeploySchema.model_validate(quiet)
    assert all(app.logging_config.enable_access_log is False for app in parsed.applications)
    assert [a["deployments"] for a in quiet["applications"]] == [a["deployments"] for a in config["applications"]]


def test_the_gpu_serve_config_fits_its_replicas_on_one_gpu():
    config = yaml.safe_load((REPO / "serve" / "gpu.yaml").read_text())
    deployments = [d for app in config["applications"] for d in app["deployments"]]
    shares = [d["ray_actor_options"]["num_gpus"] for d in deployments]
    assert all(0 < s < 1 for s in shares), "every replica takes a share of the GPU"
    assert sum(s * d["autoscaling_config"]["max_replicas"] for s, d in zip(shares, deployments)) <= 1.0
    assert {app["name"] for app in config["applications"]} == {"gan", "vae", "heat"}


def test_serving_the_gpu_config_on_a_machine_without_one_is_refused_clearly(tmp_path, monkeypatch):
    from genray import serve_config
    from genray.deploy.examples import untrained_model

    for app in ("gan", "vae"):
        untrained_model(app, tmp_path / "models")
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="GANDeployment, VAEDeployment, HeatDeployment a GPU"):
        serve_config.load(REPO / "serve" / "gpu.yaml")
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")  # a cluster may have GPU nodes (or add them)
    assert serve_config.load(REPO / "serve" / "gpu.yaml")["applications"]
