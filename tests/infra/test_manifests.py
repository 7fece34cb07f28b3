"""Every manifest under infra/ is loaded and checked: the fields KubeRay's CRDs and Kubernetes need, one Ray
version everywhere, and entrypoints whose arguments the `eartalk` job parsers accept (torchtune-style
config tests: a shipped manifest that no test loads is a manifest that silently rots)."""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
RAY_VERSION = "2.60.0"
GPU = "nvidia.com/gpu"


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, list[dict]]:
    return {str(p.relative_to(INFRA)): load_all(p) for p in sorted(INFRA.rglob("*.yaml"))}


def one(kind: str, file: str) -> dict:
    [doc] = [d for d in manifests()[file] if d["kind"] == kind]
    return doc


def config_env() -> dict[str, str]:
    return one("ConfigMap", "k8s/config.yaml")["data"]


def nightly_rayjob_from_configmap() -> dict:
    cm = one("ConfigMap", "k8s/cronjob-nightly.yaml")
    return yaml.safe_load(cm["data"]["rayjob.yaml"])


def rayjob_specs() -> dict[str, dict]:
    """Every RayJob spec we ship: the render RayJob, the RayCronJob's template, the CronJob's RayJob."""
    return {
        "rayjob-render": one("RayJob", "k8s/rayjob-render.yaml")["spec"],
        "raycronjob-nightly": one("RayCronJob", "k8s/raycronjob-nightly.yaml")["spec"]["jobTemplate"],
        "cronjob-nightly": nightly_rayjob_from_configmap()["spec"],
    }


def test_every_yaml_parses_and_names_its_kind_and_object():
    found = manifests()
    assert len(found) >= 8, sorted(found)
    for file, docs in found.items():
        assert docs, f"{file}: empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), f"{file}: {doc.keys()}"
            if doc["kind"] != "Kustomization":
                meta = doc.get("metadata", {})
                assert meta.get("name") or meta.get("generateName"), f"{file}: {doc['kind']} has no name"


def test_kustomizations_list_existing_files():
    for file in ("k8s/kustomization.yaml", "mlflow/kustomization.yaml"):
        [doc] = manifests()[file]
        for resource in doc["resources"]:
            assert (INFRA / Path(file).parent / resource).is_file(), f"{file}: {resource} missing"


def test_one_ray_version_in_image_manifests_and_pyproject():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu\s*$", dockerfile, re.M)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(rf"ray\[[^\]]*\]=={re.escape(RAY_VERSION)}", d) for d in pyproject), pyproject
    torch_pin = next(d for d in pyproject if d.startswith("torch=="))
    assert f'"{torch_pin}"' in dockerfile, "the image installs the CUDA build of the pinned torch"
    assert "--no-build-isolation" in dockerfile
    import ray

    assert ray.__version__ == RAY_VERSION
    specs = [one("RayCluster", "k8s/raycluster.yaml")["spec"]] + [s["rayClusterSpec"] for s in rayjob_specs().values()]
    assert {s["rayVersion"] for s in specs} == {RAY_VERSION}


def test_dockerfile_copies_every_package_pyproject_installs():
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY .* \./(\w+)\s*$", (INFRA / "Dockerfile").read_text(), re.M))
    assert {p.rstrip("*") for p in packages} <= copied


def test_raycluster_has_cpu_head_and_autoscaling_gpu_workers():
    spec = one("RayCluster", "k8s/raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    [head_container] = head["template"]["spec"]["containers"]
    assert GPU not in head_container["resources"].get("limits", {})
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    [workers] = spec["workerGroupSpecs"]
    assert 0 <= workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    assert workers["maxReplicas"] > workers["minReplicas"], "the autoscaler needs room to grow"
    [worker] = workers["template"]["spec"]["containers"]
    gpus = int(worker["resources"]["limits"][GPU])
    assert gpus >= 1 and int(workers["rayStartParams"]["num-gpus"]) == gpus
    assert worker["image"] == head_container["image"]
    for container in (head_container, worker):
        refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in container["envFrom"]}
        assert refs == {"eartalk-config", "eartalk-s3"}


@pytest.mark.parametrize("name", ["rayjob-render", "raycronjob-nightly", "cronjob-nightly"])
def test_rayjobs_clean_up_and_run_on_the_shared_cluster_spec(name):
    spec = rayjob_specs()[name]
    assert spec["shutdownAfterJobFinishes"] is True
    for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        assert isinstance(spec[field], int) and spec[field] > 0, field
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0
    assert spec["rayClusterSpec"] == one("RayCluster", "k8s/raycluster.yaml")["spec"], \
        f"{name}: its rayClusterSpec drifted from raycluster.yaml"
    assert spec["entrypoint"].strip()
    # the entrypoint's $VARS expand where it runs: on the head (HTTPMode), whose env comes from the config
    assert spec.get("submissionMode") == "HTTPMode", f"{name}: a K8sJobMode submitter pod lacks the config env"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    sources = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in head["envFrom"]}
    assert {"eartalk-config", "eartalk-s3"} <= sources, sources


def test_both_nightly_schedules_run_the_same_rayjob_and_never_overlap():
    cron = one("RayCronJob", "k8s/raycronjob-nightly.yaml")["spec"]
    plain = one("CronJob", "k8s/cronjob-nightly.yaml")["spec"]
    assert cron["schedule"] == plain["schedule"]
    assert len(cron["schedule"].split()) == 5
    assert cron["jobTemplate"] == nightly_rayjob_from_configmap()["spec"]
    assert cron["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600  # daily schedule
    assert plain["concurrencyPolicy"] == "Forbid"


def test_plain_cronjob_can_create_the_rayjob_it_mounts():
    docs = {d["kind"]: d for d in manifests()["k8s/cronjob-nightly.yaml"]}
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    binding = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    [rule] = docs["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and "rayjobs" in rule["resources"] and "create" in rule["verbs"]
    [container] = pod["containers"]
    assert container["args"][:2] == ["create", "-f"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = {v["name"]: v["configMap"]["name"] for v in pod["volumes"]}
    [(vol, path)] = mount.items()
    assert container["args"][2] == f"{path}/rayjob.yaml"
    assert volume[vol] == docs["ConfigMap"]["metadata"]["name"]
    rayjob = nightly_rayjob_from_configmap()
    assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["generateName"]


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def parse_with_job_parser(module_name: str, args: list[str]) -> argparse.Namespace:
    """Parse `args` with the job module's own argparse parser.

    A module exposing build_parser() is used directly; otherwise its main() is run with argparse's
    parse_args wrapped to stop right after a successful parse (nothing of the job itself runs).
    """
    module = importlib.import_module(module_name)
    if hasattr(module, "build_parser"):
        return module.build_parser().parse_args(args)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **kw):
        raise _Parsed(original(self, *a, **kw))

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        module.main(args)
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{module_name}.main() returned without parsing its arguments")


def entrypoints() -> list[tuple[str, str]]:
    return [(name, spec["entrypoint"]) for name, spec in rayjob_specs().items()]


@pytest.mark.parametrize("name, entrypoint", entrypoints(), ids=[n for n, _ in entrypoints()])
def test_entrypoint_arguments_are_accepted_by_the_job_cli(name, entrypoint, monkeypatch):
    from jobs.cli import COMMANDS

    for key, value in config_env().items():
        monkeypatch.setenv(key, value)
    argv = [os.path.expandvars(a) for a in shlex.split(entrypoint)]
    assert not [a for a in argv if "$" in a], f"{name}: unset variables in {argv}"
    if argv[:2] == ["python", "-m"]:
        module, args = argv[2], argv[3:]
    else:
        assert argv[0] == "eartalk", argv
        module, args = COMMANDS[argv[1]][0], argv[2:]
    assert module in {m for m, _ in COMMANDS.values()}, f"{name}: {module} is not an eartalk command"
    try:
        namespace = parse_with_job_parser(module, args)
    except SystemExit as exit_:
        pytest.fail(f"{name}: {module} rejected {args} (exit {exit_.code})")
    assert namespace.tracking_uri == config_env()["MLFLOW_TRACKING_URI"]


def test_mlflow_server_uses_postgres_and_s3_and_answers_the_farm():
    docs = {d["kind"]: d for d in manifests()["mlflow/mlflow-server.yaml"]}
    postgres = {d["kind"]: d for d in manifests()["mlflow/postgres.yaml"]}
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"][1:] if "=" in a)
    assert container["args"][0] == "server"
    backend = args["backend-store-uri"]
    pg_service, pg_port = postgres["Service"]["metadata"]["name"], postgres["Service"]["spec"]["ports"][0]["port"]
    assert backend.startswith("postgresql://") and f"@{pg_service}:{pg_port}/" in backend
    secret_keys = set(postgres["Secret"]["stringData"])
    assert set(re.findall(r"\$\((\w+)\)", backend)) <= secret_keys
    assert {"secretRef": {"name": postgres["Secret"]["metadata"]["name"]}} in container["envFrom"]
    assert args["artifacts-destination"].startswith("s3://") and "--serve-artifacts" in container["args"]
    assert postgres["StatefulSet"]["spec"]["volumeClaimTemplates"], "runs must survive a pod restart"

    service = docs["Service"]
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    tracking = re.fullmatch(r"http://([\w.-]+):(\d+)", config_env()["MLFLOW_TRACKING_URI"])
    assert tracking and tracking[1] == service["metadata"]["name"]
    assert int(tracking[2]) == service["spec"]["ports"][0]["port"] == int(args["port"])
    host_header = f"{tracking[1]}:{tracking[2]}"
    assert any(fnmatch.fnmatch(host_header, h) for h in args["allowed-hosts"].split(",")), \
        "MLflow 3 would reject the farm's Host header"
    mlflow_pin = re.search(r'"mlflow==([\d.]+)"', (INFRA / "mlflow" / "Dockerfile").read_text())[1]
    assert container["image"].endswith(f":{mlflow_pin}")
