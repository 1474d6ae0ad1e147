"""A real multi-node Ray cluster on this machine: `ray start --head` plus `ray start --address`
worker nodes (each its own raylet, object store and resources), jobs submitted with
`ray job submit`, and a worker node killed mid-job.

Nothing here depends on timing: the jobs' Protectors hold their batches on gate files
(faults.HOLD_UNTIL_FILE_ENV, set through the job's runtime env) until the state API shows what the
test needs — a batch held on each node — and only then does the test open a gate or kill a node.

Token authentication stays on: every process gets RAY_AUTH_MODE=token and a fresh RAY_AUTH_TOKEN,
so ~/.ray is neither read nor written. Each node runs in its own process session, so a node is
killed, and the cluster torn down, by signalling exactly those sessions: `ray stop` would stop every
Ray process of this user on the machine, other test runs' included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers import encode, free_port, kill_session, photo

from danp_pipeline import storage
from danp_pipeline.job.faults import HOLD_UNTIL_FILE_ENV
from danp_pipeline.manifest import provenance
from danp_pipeline.manifest.output import Output

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_TIMEOUT_S = 420
FAST = ["--model", "tiny-ip2p", "--resolution", "64", "--steps", "2", "--timesteps", "2", "--gpus-per-actor", "0",
        "--batch-size", "1", "--commit-rows", "1"]   # a part per photo: the test watches parts appear
#: 0.6 CPU per actor on 1-CPU nodes: two Protectors can never share a node, so a 2-actor job must
#: use both, and the CPU tasks (0.25 CPU) still fit beside them.
ACTORS = ["--actors", "2", "--cpus-per-actor", "0.6"]


class Cluster:
    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="danp-mn-", dir="/tmp")  # short: Ray's socket paths have a limit
        self.port, self.dashboard = free_port(), free_port()
        bindir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "DANP_FAULT_"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex, PYTHONUNBUFFERED="1",
                        PATH=f"{bindir}:{os.environ.get('PATH', '')}")
        self.nodes: dict[str, subprocess.Popen] = {}
        self.address = f"http://127.0.0.1:{self.dashboard}"

    def start_node(self, name: str, *args: str) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=150000000",
                  f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                  f"--runtime-env-agent-port={free_port()}", "--block"]
        log = open(os.path.join(self.temp, f"{name}.log"), "wb")
        self.nodes[name] = subprocess.Popen([RAY, "start", *args, *common], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.start_node("head", "--head", f"--port={self.port}", '--resources={"head": 1}', "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
                        f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp}/ray")
        self.wait_nodes(1)
        self.start_node("worker", f"--address=127.0.0.1:{self.port}", '--resources={"worker": 1}')
        self.wait_nodes(2)

    def ray(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"ray {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done

    def state(self, kind: str) -> list[dict]:
        """Ray's state API (``ray list KIND --detail``) over the dashboard's HTTP endpoint: same data,
        without starting a Python process per poll on a 2-core machine."""
        request = urllib.request.Request(f"{self.address}/api/v0/{kind}?limit=10000&detail=1",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        assert body.get("result"), body
        return body["data"]["result"]["result"]

    def alive_nodes(self) -> dict[str, dict]:
        return {n["node_id"]: n for n in self.state("nodes") if n["state"] == "ALIVE"}

    def wait_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.nodes.items():
                assert proc.poll() is None, f"{name} node exited:\n{self.log(name)}"
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except (OSError, AssertionError, ValueError):  # the dashboard is not up yet
                pass
            assert time.monotonic() < deadline, f"{count} nodes not up:\n{self.log('head')}"
            time.sleep(2)

    def submit(self, *argv: str, env_vars: dict[str, str] | None = None) -> str:
        job_id = f"danp-{uuid.uuid4().hex[:8]}"
        runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
        self.ray("job", "submit", "--address", self.address, "--submission-id", job_id, "--no-wait",
                 "--working-dir", str(ROOT), *runtime_env, "--", "python", "jobs/protect.py", *argv)
        return job_id

    def wait_job(self, job_id: str) -> tuple[str, str]:
        """Follow the job to its end; (final status, logs)."""
        logs = self.ray("job", "logs", "--address", self.address, "--follow", job_id, timeout=JOB_TIMEOUT_S,
                        check=False).stdout
        status = self.ray("job", "status", "--address", self.address, job_id).stdout.lower()
        for state in ("succeeded", "failed", "stopped"):
            if f"' {state}" in status or f"was {state}" in status:
                return state.upper(), logs
        raise AssertionError(f"job {job_id} did not end: {status}")

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole session (raylet, object store, its workers), like a VM that vanished."""
        kill_session(self.nodes.pop(name))

    def log(self, name: str) -> str:
        path = os.path.join(self.temp, f"{name}.log")
        return Path(path).read_text(errors="replace")[-3000:] if os.path.exists(path) else ""

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:
            self.kill(name)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def photos(directory: Path, count: int) -> list[str]:
    names = ["astronaut", "chelsea", "coffee", "camera"]
    keys = []
    for i in range(count):
        keys.append(f"batch{i % 3}/img{i:02d}.jpg")
        path = directory / keys[-1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(photo(names[i % 4], (64 + 8 * (i % 3), 48)), "JPEG", quality=85 + i % 10))
    return sorted(keys)


def manifest_keys(output: Path) -> list[str]:
    """Source keys of the committed rows, after checking that every one is ok."""
    fs, root = storage.filesystem(str(output))
    rows = provenance.read_manifest(fs, Output(fs, root).manifest_dir).to_pylist()
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    return sorted(r["source_key"] for r in rows)


def protector_actors(cluster: Cluster, exclude: set[str] = frozenset()) -> dict[str, dict]:
    """{actor id: actor} of every Protector (Ray Data's MapWorker) the cluster has seen, minus ``exclude``."""
    return {a["actor_id"]: a for a in cluster.state("actors")
            if "MapWorker" in a["class_name"] and a["actor_id"] not in exclude}


def protector_tasks(cluster: Cluster, actors: dict[str, dict], states: tuple[str, ...]) -> dict[str, int]:
    """{node id: number of batch tasks} of ``actors`` in one of ``states`` (a task records the node it ran
    on). Only ``MapWorker.submit``, Ray Data's call on a bundle of rows; not ``__init__`` or ``get_location``."""
    counts: dict[str, int] = {}
    for task in cluster.state("tasks"):
        if (task.get("actor_id") in actors and task["name"].endswith(".submit") and task["state"] in states
                and task.get("node_id")):
            counts[task["node_id"]] = counts.get(task["node_id"], 0) + 1
    return counts


def poll(what: str, condition, timeout: float = JOB_TIMEOUT_S, every: float = 1.0):
    """Call ``condition()`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return result


@pytest.mark.integration
def test_submitted_job_uses_both_nodes_and_survives_losing_one(cluster, tmp_path):
    """Placement is made certain, not likely: 0.6 CPU per actor on 1-CPU nodes puts one Protector on
    each node, and the actors hold their batches (faults.HOLD_UNTIL_FILE_ENV) until the test has seen
    each node's actor take work, so neither actor can finish the job alone, however fast it is."""
    started = time.monotonic()
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    head_id = next(i for i, n in nodes.items() if n["is_head_node"])
    worker_id = next(i for i in nodes if i != head_id)
    assert nodes[worker_id]["resources_total"].get("worker") == 1
    running, done = ("RUNNING",), ("RUNNING", "FINISHED")

    # 1. a submitted job runs Protector actors on both nodes and completes. Every actor holds its
    # batches until the gate opens. The actors get bundles of a few photos, and a held actor
    # takes at most max_tasks_in_flight_per_actor (2) of them: the other node's actor must take
    # the rest.
    expected = photos(tmp_path / "in", 16)
    gate = tmp_path / "job1-gate"
    job = cluster.submit(str(tmp_path / "in"), str(tmp_path / "out"), *ACTORS, *FAST,
                         env_vars={HOLD_UNTIL_FILE_ENV: str(gate)})
    poll("Protector tasks on both nodes", lambda: {head_id, worker_id} <= set(
        protector_tasks(cluster, protector_actors(cluster), done)))
    gate.touch()
    state, logs = cluster.wait_job(job)
    assert state == "SUCCEEDED", logs[-4000:]
    assert "16 ok, 0 error" in logs
    assert manifest_keys(tmp_path / "out") == expected
    first = protector_actors(cluster)
    finished = protector_tasks(cluster, first, ("FINISHED",))
    assert sorted(a["node_id"] for a in first.values()) == sorted([head_id, worker_id]), first
    assert set(finished) == {head_id, worker_id}, finished  # each node's actor protected photos
    first_job_s = time.monotonic() - started

    # 2. the worker node dies mid-job; the cluster gets a replacement node, as an autoscaler would.
    # The actors hold on a gate file per node: once each node's actor holds a batch, the head's gate
    # opens; the worker node is killed after the head committed a part, with its own batches still
    # held, so the kill certainly lands mid-job on an actor with work in flight.
    expected = photos(tmp_path / "in2", 16)
    gate = str(tmp_path / "job2-gate-{node_id}")
    job = cluster.submit(str(tmp_path / "in2"), str(tmp_path / "out2"), *ACTORS, *FAST,
                         env_vars={HOLD_UNTIL_FILE_ENV: gate})
    poll("held Protector tasks on both nodes", lambda: {head_id, worker_id} <= set(
        protector_tasks(cluster, protector_actors(cluster, set(first)), running)))
    second = protector_actors(cluster, set(first))
    assert sorted(a["node_id"] for a in second.values()) == sorted([head_id, worker_id]), second
    Path(gate.format(node_id=head_id)).touch()
    fs, root = storage.filesystem(str(tmp_path / "out2"))
    poll("a part committed by the head node",
         lambda: provenance.list_parts(fs, Output(fs, root).manifest_dir))
    committed_before_kill = len(manifest_keys(tmp_path / "out2"))
    assert committed_before_kill < len(expected)
    cluster.kill("worker")
    cluster.start_node("replacement", f"--address=127.0.0.1:{cluster.port}", '--resources={"worker": 1}')
    replacement_id = poll("the replacement node", lambda: next(
        (i for i in cluster.alive_nodes() if i not in (head_id, worker_id)), None), timeout=180)
    Path(gate.format(node_id=replacement_id)).touch()
    state, logs = cluster.wait_job(job)
    reran = state != "SUCCEEDED"
    if reran:  # the job's own retries were not enough: one rerun redoes only what is missing
        state, logs = cluster.wait_job(cluster.submit(str(tmp_path / "in2"), str(tmp_path / "out2"), *ACTORS, *FAST))
    assert state == "SUCCEEDED", logs[-4000:]
    assert manifest_keys(tmp_path / "out2") == expected  # every photo exactly once, all ok

    names = {head_id: "head", worker_id: "killed worker", replacement_id: "replacement"}
    after = protector_actors(cluster, set(first))
    placement = sorted((names.get(a["node_id"], a["node_id"]), a["state"], int(a.get("num_restarts") or 0))
                       for a in after.values())
    moved = [a for i, a in after.items() if second[i]["node_id"] == worker_id]
    if not reran:  # the actor of the killed node was restarted on a live node and finished the job: on the
        # replacement node, or on the head when Ray Data had already released the head's idle actor
        assert [names.get(a["node_id"]) for a in moved] in (["replacement"], ["head"]), placement
        assert int(moved[0].get("num_restarts") or 0) >= 1, placement
    print(f"\nmulti-node: first job done after {first_job_s:.0f} s, finished Protector tasks by node "
          f"{ {names[n]: c for n, c in finished.items()} }; worker killed after {committed_before_kill}/16 photos "
          f"committed; job {'needed one rerun' if reran else 'completed on its own retries'}; Protector actors "
          f"(node, state, restarts): {placement}; total {time.monotonic() - started:.0f} s")
