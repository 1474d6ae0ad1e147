"""A real multi-node Ray cluster on this machine: `ray start --head` plus `ray start --address`
worker nodes (each its own raylet, object store and resources), jobs submitted with
`ray job submit`, and a worker node killed mid-job.

Token authentication stays on: every process gets RAY_AUTH_MODE=token and a fresh RAY_AUTH_TOKEN,
so ~/.ray is neither read nor written. Each node runs in its own process session, so a node is
killed, and the cluster torn down, by signalling exactly those sessions: `ray stop` would stop every
Ray process of this user on the machine, other test runs' included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from pipeline_support import encode, free_port, real_photo

from danp_pipeline import provenance, storage

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_TIMEOUT_S = 420
FAST = ["--resolution", "64", "--steps", "2", "--timesteps", "2", "--gpus-per-actor", "0", "--batch-size", "1"]
#: 0.6 CPU per actor on 1-CPU nodes: two Protectors can never share a node, so a 2-actor job must
#: use both, and the read tasks (0.25 CPU) still fit beside them.
ACTORS = ["--actors", "2", "--cpus-per-actor", "0.6"]


class Cluster:
    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="danp-mn-", dir="/tmp")  # short: Ray's socket paths have a limit
        self.port, self.dashboard = free_port(), free_port()
        bindir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
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
        out = self.ray("list", kind, "--address", self.address, "--format", "json", "--detail", "--limit", "10000")
        return _json_list(out.stdout)

    def alive_nodes(self) -> dict[str, dict]:
        return {n["node_id"]: n for n in self.state("nodes") if n["state"] == "ALIVE"}

    def wait_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.nodes.items():
                assert proc.poll() is None, f"{name} node exited:\n{self.log(name)}"
            done = self.ray("list", "nodes", "--address", self.address, "--format", "json", check=False, timeout=60)
            if done.returncode == 0 and sum(n["state"] == "ALIVE" for n in _json_list(done.stdout)) >= count:
                return
            assert time.monotonic() < deadline, f"{count} nodes not up:\n{self.log('head')}"
            time.sleep(2)

    def submit(self, *argv: str) -> str:
        job_id = f"danp-{uuid.uuid4().hex[:8]}"
        self.ray("job", "submit", "--address", self.address, "--submission-id", job_id, "--no-wait",
                 "--working-dir", str(ROOT), "--", "python", "jobs/protect.py", *argv)
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
        proc = self.nodes.pop(name)
        deadline = time.monotonic() + 60
        while (pids := _session_pids(proc.pid)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        path = os.path.join(self.temp, f"{name}.log")
        return Path(path).read_text(errors="replace")[-3000:] if os.path.exists(path) else ""

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:
            self.kill(name)
        shutil.rmtree(self.temp, ignore_errors=True)


def _json_list(text: str) -> list[dict]:
    """`ray list … --format json` output; it prints "No resource in the cluster" when empty."""
    return json.loads(text) if text.lstrip().startswith("[") else []


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def photos(directory: Path, count: int) -> None:
    names = ["astronaut", "chelsea", "coffee", "camera"]
    for i in range(count):
        path = directory / f"batch{i % 3}" / f"img{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(real_photo(names[i % 4], (64 + 8 * (i % 3), 48)), "JPEG", quality=85 + i % 10))


def current_keys(output: Path) -> list[str]:
    fs, root = storage.filesystem(str(output))
    rows = provenance.read_manifest(fs, storage.join(root, provenance.MANIFEST_DIR)).to_pylist()
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    return sorted(r["source_key"] for r in rows)


def protectors(cluster: Cluster) -> list[dict]:
    """Every Protector actor (Ray Data's map workers) the cluster has seen: node id, state, restarts."""
    return [{"node_id": a.get("node_id"), "state": a.get("state"), "restarts": int(a.get("num_restarts") or 0)}
            for a in cluster.state("actors") if "MapWorker" in a["class_name"]]


@pytest.mark.integration
def test_submitted_job_uses_both_nodes_and_survives_losing_one(cluster, tmp_path):
    started = time.monotonic()
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    head_id = next(i for i, n in nodes.items() if n["is_head_node"])
    worker_id = next(i for i in nodes if i != head_id)
    assert nodes[worker_id]["resources_total"].get("worker") == 1

    # 1. a submitted job runs Protector actors on both nodes and completes
    photos(tmp_path / "in", 8)
    job = cluster.submit(str(tmp_path / "in"), str(tmp_path / "out"), *ACTORS, *FAST)
    state, logs = cluster.wait_job(job)
    assert state == "SUCCEEDED", logs[-4000:]
    assert "8 ok, 0 error" in logs
    assert current_keys(tmp_path / "out") == sorted(f"batch{i % 3}/img{i:02d}.jpg" for i in range(8))
    first_job_s = time.monotonic() - started
    # Where the actors ran is reported, not asserted: without CPU contention the second actor of a
    # short job can still be pending (node None) when the first one has done every photo (seen in CI).

    # 2. the worker node dies mid-job; the cluster gets a replacement node, as an autoscaler would
    photos(tmp_path / "in2", 16)
    job = cluster.submit(str(tmp_path / "in2"), str(tmp_path / "out2"), *ACTORS, *FAST)
    fs, root = storage.filesystem(str(tmp_path / "out2"))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not provenance.list_parts(fs, storage.join(root, provenance.MANIFEST_DIR)):
        assert time.monotonic() < deadline, "no manifest part appeared"
        time.sleep(0.5)
    committed_before_kill = len(current_keys(tmp_path / "out2"))
    cluster.kill("worker")
    cluster.start_node("replacement", f"--address=127.0.0.1:{cluster.port}", '--resources={"worker": 1}')
    state, logs = cluster.wait_job(job)
    reran = state != "SUCCEEDED"
    if reran:  # the job's own retries were not enough: one rerun redoes only what is missing
        state, logs = cluster.wait_job(cluster.submit(str(tmp_path / "in2"), str(tmp_path / "out2"), *ACTORS, *FAST))
    assert state == "SUCCEEDED", logs[-4000:]
    assert current_keys(tmp_path / "out2") == sorted(f"batch{i % 3}/img{i:02d}.jpg" for i in range(16))
    names = {head_id: "head", worker_id: "killed worker"}
    names.update({i: "replacement" for i in cluster.alive_nodes() if i not in names})
    actors = [(names.get(a["node_id"], a["node_id"]), a["state"], a["restarts"]) for a in protectors(cluster)]
    print(f"\nmulti-node: first job done after {first_job_s:.0f} s; worker killed after {committed_before_kill}/16 "
          f"photos committed; job {'needed one rerun' if reran else 'completed on its own retries'}; "
          f"Protector actors (node, state, restarts): {actors}; total {time.monotonic() - started:.0f} s")
