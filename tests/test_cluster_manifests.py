"""cluster/ and jobs/: every manifest parses, has the fields KubeRay / the cluster launcher need, pins
the Ray version the tests run, and every `python jobs/X.py …` command written in a manifest or a
doc names an entrypoint that exists and options its real parser accepts."""

from __future__ import annotations

import importlib.util
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import ray
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from ray.runtime_env import RuntimeEnv

from danp_pipeline import cli

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
YAML_FILES = sorted([*CLUSTER.rglob("*.yaml"), ROOT / "jobs" / "runtime_env.yaml"])
DOC_FILES = sorted([*YAML_FILES, CLUSTER / "README.md", CLUSTER / "Dockerfile", *(ROOT / "jobs").glob("*.py")])


def pinned_ray() -> str:
    match = re.search(r"^ARG RAY_VERSION=(\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M)
    assert match, "cluster/Dockerfile must declare ARG RAY_VERSION=<version>"
    return match.group(1)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(path: Path, kind: str) -> list[dict]:
    return [d for d in docs(path) if d.get("kind") == kind]


def embedded_rayjobs() -> list[dict]:
    """RayJobs that the CronJob creates, stored as YAML in its ConfigMap."""
    found = []
    for cm in by_kind(KUBERAY / "cronjob.yaml", "ConfigMap"):
        for text in cm["data"].values():
            found += [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "RayJob"]
    return found


def all_rayjobs() -> list[dict]:
    return by_kind(KUBERAY / "rayjob.yaml", "RayJob") + embedded_rayjobs()


# -- versions --------------------------------------------------------------------------------------

def test_ray_version_is_pinned_once_and_matches_the_tested_ray_and_pyproject():
    version = pinned_ray()
    assert version == ray.__version__, "cluster images must run the Ray version the tests run"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_req = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    assert ray_req.specifier.contains(Version(version)), (str(ray_req), version)
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu$", dockerfile, re.M)
    assert '"ray[data,default]==${RAY_VERSION}"' in dockerfile


def test_every_image_and_ray_version_field_uses_the_pinned_version():
    version, seen = pinned_ray(), 0
    for path in [*YAML_FILES, CLUSTER / "README.md"]:
        text = path.read_text()
        for image in re.findall(r"rayproject/ray:(\S+)", text):
            assert image.startswith(f"{version}-"), (path.name, image)
            seen += 1
        for image in re.findall(r"danp-pipeline:(\S+)", text):
            assert f"ray{version}" in image, (path.name, image)
            seen += 1
        for pinned in re.findall(r"ray\[[a-z,]+\]==(\S+?)[\"']?(?:\s|$)", text):
            assert pinned == version, (path.name, pinned)
    for spec in [d["spec"] for d in by_kind(KUBERAY / "raycluster.yaml", "RayCluster")] + \
            [j["spec"]["rayClusterSpec"] for j in all_rayjobs()]:
        assert spec["rayVersion"] == version
    assert seen >= 5


# -- KubeRay ---------------------------------------------------------------------------------------

def check_cluster_spec(spec: dict) -> None:
    """The fields KubeRay's RayCluster CRD requires, plus the project's GPU/autoscaling choices."""
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    check_pod(head["template"])
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = check_pod(group["template"])
        limits = containers[0]["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            gpu_groups += 1
            assert containers[0]["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
            assert group["maxReplicas"] > group["minReplicas"], "the GPU group must be able to scale"
    assert gpu_groups >= 1


def check_pod(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c["name"] and c["image"] for c in containers)
    return containers


def test_raycluster_has_what_kuberay_requires_and_an_autoscaled_gpu_group():
    (cluster,) = by_kind(KUBERAY / "raycluster.yaml", "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    check_cluster_spec(cluster["spec"])


@pytest.mark.parametrize("job", all_rayjobs(), ids=lambda j: j["metadata"].get("name") or j["metadata"]["generateName"])
def test_rayjobs_have_what_kuberay_requires(job):
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"].get("name") or job["metadata"].get("generateName")
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python jobs/")
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] in ("K8sJobMode", "HTTPMode")
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR (\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert env.pop("working_dir") == workdir, "the job runs from the repository copy inside the image"
    RuntimeEnv(**env)  # Ray's own validation of the rest of the runtime env
    if "clusterSelector" not in spec:
        check_cluster_spec(spec["rayClusterSpec"])


def test_cronjob_creates_an_ingest_rayjob_with_the_rights_it_needs():
    path = KUBERAY / "cronjob.yaml"
    (cron,) = by_kind(path, "CronJob")
    assert cron["apiVersion"] == "batch/v1" and len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = check_pod({"spec": pod})
    accounts = {d["metadata"]["name"] for d in by_kind(path, "ServiceAccount")}
    assert pod["serviceAccountName"] in accounts
    (role,) = by_kind(path, "Role")
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
               for r in role["rules"])
    (binding,) = by_kind(path, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {s["name"] for s in binding["subjects"]} == {pod["serviceAccountName"]}
    # the pod runs `kubectl create -f <file>` on a file that the ConfigMap volume provides
    command = container["command"]
    assert command[:3] == ["kubectl", "create", "-f"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (configmap,) = [c for c in by_kind(path, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    key = Path(command[3]).relative_to(mount["mountPath"]).as_posix()
    assert key in configmap["data"]
    (job,) = embedded_rayjobs()
    assert job["spec"]["entrypoint"].startswith("python jobs/ingest.py ")


# -- cluster launcher --------------------------------------------------------------------------------

def test_launcher_yaml_has_a_head_an_autoscaled_gpu_worker_type_and_installs_the_repo():
    (config,) = docs(CLUSTER / "launcher" / "aws-gpu.yaml")
    assert config["cluster_name"] and config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != config["head_node_type"]
           and re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert gpu and all(t["max_workers"] > t["min_workers"] >= 0 for t in gpu)
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu)
    assert any("pip install" in c and "danp-pipeline" in c for c in config["setup_commands"])
    assert "." in config["file_mounts"].values()
    assert config["docker"]["image"] == f"rayproject/ray:{pinned_ray()}-py311-gpu"


def test_runtime_env_ships_the_repo_and_exactly_the_library_dependencies():
    env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)
    assert env["working_dir"] == "."
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(env["pip"]) == sorted(d for d in deps if Requirement(d).name != "ray")


# -- entrypoints named anywhere exist and accept their options ---------------------------------------

def commands(text: str) -> list[list[str]]:
    """Every `python jobs/X.py …` command in a text: comment marks dropped, `\\` continuations joined."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\{1,2}\n\s*", " ", "\n".join(lines))  # `\` (or `\\` in a docstring) ends a line
    found = []
    for match in re.finditer(r"python (jobs/[\w.]+\.py)([^\n]*)", joined):
        tail = re.split(r">>|\||&&|;|`", match.group(2))[0]
        found.append([match.group(1), *shlex.split(tail)])
    return found


def entrypoint_commands() -> list[tuple[str, list[str]]]:
    found = [(path.name, cmd) for path in DOC_FILES for cmd in commands(path.read_text())]
    found += [("rayjob " + (j["metadata"].get("name") or j["metadata"]["generateName"]),
               commands(j["spec"]["entrypoint"])[0]) for j in all_rayjobs()]
    return found


@lru_cache(maxsize=None)
def load_job(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_job_entrypoint_is_documented_and_used():
    named = {cmd[0] for _, cmd in entrypoint_commands()}
    assert {"jobs/protect.py", "jobs/ingest.py", "jobs/evaluate.py"} <= named
    assert len(entrypoint_commands()) >= 8


@pytest.mark.parametrize("where,command", entrypoint_commands(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]))
def test_entrypoint_exists_and_its_real_parser_accepts_the_options(where, command):
    script, argv = command[0], command[1:]
    assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
    parser = load_job(script).build_parser()
    if not argv:  # a mention in prose, not a command
        return
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: {script} rejects {argv}")
    if script in ("jobs/protect.py", "jobs/ingest.py"):
        cfg = cli.pipeline_config(args)  # values valid too, not just names
        assert cfg.input_uri == argv[0] and cfg.output_uri == argv[1]


def test_job_parsers_offer_every_cli_option():
    from danp_pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, script in (("run", "jobs/protect.py"), ("ingest", "jobs/ingest.py")):
        cli_options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        job_options = {o for a in load_job(script).build_parser()._actions for o in a.option_strings}
        assert cli_options <= job_options, cli_options - job_options
