"""deploy/: every manifest parses, uses KubeRay's ray.io/v1 fields, and runs real ``unspur`` commands.

Each RayJob / RayCronJob entrypoint must name an ``unspur`` subcommand, point at files that exist
in the repository (the image copies it to /app, see deploy/Dockerfile), and its config plus
dotted overrides must validate against the job's config model. No cluster or Docker is needed.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import ray
import typer
import yaml

from unspur.config import load_config
from unspur.workflows.cli import JOBS, app
from unspur.workflows.cluster.submit import build_runtime_env, check_subcommand

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
APP_DIR = "/app/"  # where deploy/Dockerfile puts the repository
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "runtime_env.yaml")
EXPECTED = {
    "raycluster.yaml": "RayCluster",
    "rayjob-masks.yaml": "RayJob",
    "rayjob-finetune.yaml": "RayJob",
    "rayjob-sweep.yaml": "RayJob",
    "raycronjob.yaml": "RayCronJob",
    "storage.yaml": "PersistentVolumeClaim",
}
KINDS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "RayCronJob": "ray.io/v1",
    "PersistentVolumeClaim": "v1",
}

# Field names of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1/*_types.go) that a typo
# would silently miss: kubectl rejects unknown fields, these tests catch them first.
RAYCLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
}  # fmt: skip
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
AUTOSCALER = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
    "env", "envFrom", "volumeMounts",
}  # fmt: skip
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
RAYCRONJOB_SPEC = {"schedule", "jobTemplate", "suspend"}  # as documented for KubeRay 1.6 (alpha)


def _docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} holds no YAML document"
    return docs


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, doc) for p in MANIFESTS for doc in _docs(p)]


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(file, RayClusterSpec) for the RayCluster and the clusters every RayJob / RayCronJob creates."""
    specs = []
    for name, doc in _manifests():
        spec = doc.get("spec", {})
        if doc["kind"] == "RayCluster":
            specs.append((name, spec))
        elif doc["kind"] == "RayJob":
            specs.append((name, spec["rayClusterSpec"]))
        elif doc["kind"] == "RayCronJob":
            specs.append((name, spec["jobTemplate"]["rayClusterSpec"]))
    return specs


def _job_specs() -> list[tuple[str, dict[str, Any]]]:
    """(file, RayJobSpec) of every RayJob and of every RayCronJob's template."""
    jobs = []
    for name, doc in _manifests():
        if doc["kind"] == "RayJob":
            jobs.append((name, doc["spec"]))
        elif doc["kind"] == "RayCronJob":
            jobs.append((name, doc["spec"]["jobTemplate"]))
    return jobs


def _extra(keys: Any, allowed: set[str]) -> set[str]:
    return set(keys) - allowed


def test_every_expected_manifest_exists_with_its_kind() -> None:
    found = {name: doc["kind"] for name, doc in _manifests()}
    assert found == EXPECTED


@pytest.mark.parametrize("name, doc", _manifests(), ids=[n for n, _ in _manifests()])
def test_api_version_kind_and_metadata(name: str, doc: dict[str, Any]) -> None:
    assert doc.get("kind") in KINDS, f"{name}: unexpected kind {doc.get('kind')}"
    assert doc["apiVersion"] == KINDS[doc["kind"]], name
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name


def test_ray_fields_are_kuberay_fields() -> None:
    for name, doc in _manifests():
        if doc["kind"] == "RayCronJob":
            assert not _extra(doc["spec"], RAYCRONJOB_SPEC), name
    for name, job in _job_specs():
        assert not _extra(job, RAYJOB_SPEC), name
    for name, spec in _cluster_specs():
        assert not _extra(spec, RAYCLUSTER_SPEC), name
        assert not _extra(spec["headGroupSpec"], HEAD_GROUP), name
        assert not _extra(spec.get("autoscalerOptions", {}), AUTOSCALER), name
        for group in spec["workerGroupSpecs"]:
            assert not _extra(group, WORKER_GROUP), name
        assert set(spec["authOptions"]) <= {"mode", "secretName"}, name


def test_clusters_cpu_head_gpu_group_from_zero_token_auth() -> None:
    images = set()
    for name, spec in _cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["rayVersion"] == ray.__version__, f"{name}: rayVersion != installed ray"
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"], f"{name}: the head must be CPU-only"
        assert spec["headGroupSpec"]["rayStartParams"].get("num-gpus") == "0", name
        (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1, name
        worker = gpu["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        images |= {head["image"], worker["image"]}
    assert len(images) == 1, f"every pod should run the one unspur image, found {images}"


def _split_job_args(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--flag value`` / ``--flag=value`` pairs and ``key.sub=value`` overrides of a job command."""
    flags: dict[str, str] = {}
    overrides: list[str] = []
    it = iter(tokens)
    for tok in it:
        if tok.startswith("--"):
            key, sep, value = tok.partition("=")
            flags[key] = value if sep else next(it)
        else:
            assert "=" in tok, f"unexpected positional {tok!r}"
            overrides.append(tok)
    return flags, overrides


@pytest.mark.parametrize("name, job", _job_specs(), ids=[n for n, _ in _job_specs()])
def test_entrypoint_is_a_real_unspur_command_with_valid_config(name: str, job: dict[str, Any]) -> None:
    tokens = shlex.split(job["entrypoint"])
    assert tokens[0] == "unspur", f"{name}: the entrypoint should be an unspur command"
    check_subcommand(tokens[1:], typer.main.get_command(app))
    assert tokens[1] in JOBS, f"{name}: {tokens[1]} is not a job subcommand"
    for tok in tokens:
        if tok.startswith(APP_DIR):
            assert (REPO / tok[len(APP_DIR) :]).exists(), f"{name}: {tok} is not in the repository"
    flags, overrides = _split_job_args(tokens[2:])
    assert flags["--config"].startswith(APP_DIR + "workflows/configs/"), name
    module = importlib.import_module(f"unspur.workflows.{JOBS[tokens[1]][0]}")
    overrides += [f"out={flags['--out']}"] if "--out" in flags else []
    load_config(module.CONFIG, REPO / flags["--config"][len(APP_DIR) :], overrides)
    env = yaml.safe_load(job.get("runtimeEnvYAML") or "{}")
    assert isinstance(env, dict), f"{name}: runtimeEnvYAML must be a mapping"


def test_runtime_env_file_is_accepted_by_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    env = build_runtime_env(runtime_env_file=DEPLOY / "runtime_env.yaml")
    RuntimeEnv(**env)
    assert env["env_vars"]["HF_HOME"] == "/data/hf-cache"


def test_dockerfile_builds_the_gpu_image_with_the_pins() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311-gpu" in text
    assert re.search(r'pip install [^\n]*-c constraints\.txt "\.\[gpu\]"', text)
    assert "WORKDIR /app" in text and "torchvision_cpu_fix" not in text
    for path in ("pyproject.toml", "constraints.txt", "unspur", "actors", "workflows", "tune_spaces"):
        assert (REPO / path).exists() and path in text


def test_readme_covers_every_manifest() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for name in [*EXPECTED, "runtime_env.yaml", "Dockerfile"]:
        assert name in readme, f"deploy/README.md does not mention {name}"
    assert "RayCronJob" in readme and "feature gate" in readme.lower() and "RAY_AUTH_TOKEN" in readme
