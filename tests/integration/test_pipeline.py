"""The Ray Data job end to end: moto S3 in and out, bad inputs, rerun, crash and resume, the CLI."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pyarrow as pa
import pytest
from helpers import (
    FAST_ARGS,
    FAST_ATTACK,
    SECRET_KEY,
    bad_inputs,
    check_linf,
    encode,
    fast_config,
    good_photos,
    kill_session,
    odd_photos,
    photo,
    protect_rows,
    s3_env,
    s3_options,
    upload,
)

from danp_pipeline import cli, storage
from danp_pipeline import config as C
from danp_pipeline.config import config_json, config_sha256, output_settings
from danp_pipeline.job import pipeline, reader, resources
from danp_pipeline.job.faults import CRASH_ON_KEY_ENV, HANG_AFTER_PARTS_ENV, HOLD_UNTIL_FILE_ENV
from danp_pipeline.manifest import provenance, verify, writer
from danp_pipeline.manifest.output import Output, output_name

RUN_TIMEOUT_S = 420


# -- reader (no Ray) ----------------------------------------------------------------------------

def test_prompts_file_json_and_csv(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"a.jpg": "add a hat", "./b/c.png": ["x", "y"]}))
    (tmp_path / "p.csv").write_text("key,prompt\na.jpg,add a hat\na.jpg,make it snow\nb/c.png,x\n")
    assert reader.load_prompts_file(str(tmp_path / "p.json")) == {"a.jpg": ("add a hat",), "b/c.png": ("x", "y")}
    assert reader.load_prompts_file(str(tmp_path / "p.csv")) == {"a.jpg": ("add a hat", "make it snow"),
                                                                   "b/c.png": ("x",)}
    (tmp_path / "bad.json").write_text(json.dumps({"a.jpg": ""}))
    with pytest.raises(ValueError, match="a.jpg"):
        reader.load_prompts_file(str(tmp_path / "bad.json"))
    (tmp_path / "bad.csv").write_text("name,text\na,b\n")
    with pytest.raises(ValueError, match="key,prompt"):
        reader.load_prompts_file(str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match="cannot read prompts file"):
        reader.load_prompts_file(str(tmp_path / "missing.json"))


def test_listing_skips_the_sidecar_and_an_output_inside_input(tmp_path):
    (tmp_path / "in" / "out" / "images").mkdir(parents=True)
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")
    (tmp_path / "in" / "prompts.json").write_text("{}")
    (tmp_path / "in" / "out" / "images" / "a.jpg.png").write_bytes(b"x")
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "in" / "out"),
                      prompts_file=str(tmp_path / "in/prompts.json"))
    items = list(reader.list_inputs(cfg, {"a.jpg": ("p",)}))
    assert [(i["source_key"], i["prompts"]) for i in items] == [("a.jpg", ["p"])]
    assert items[0]["source_uri"] == f"file://{tmp_path}/in/a.jpg"


def test_read_objects_hashes_and_turns_failures_into_rows(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"abc")
    items = [{"source_key": "a.jpg", "source_uri": "", "path": str(tmp_path / "a.jpg"), "size": 3, "prompts": []},
             {"source_key": "gone.jpg", "source_uri": "", "path": str(tmp_path / "gone.jpg"), "size": 3, "prompts": []},
             {"source_key": "huge.tif", "source_uri": "", "path": str(tmp_path / "a.jpg"), "size": 10**12,
              "prompts": []},
             {"source_key": "../up.jpg", "source_uri": "", "path": str(tmp_path / "a.jpg"), "size": 3, "prompts": []}]
    out = reader.read_objects(pa.Table.from_pylist(items), input_uri=str(tmp_path), storage_options={},
                              max_pixels=1000).to_pylist()
    assert out[0]["data"] == b"abc" and out[0]["source_sha256"] == provenance.sha256_hex(b"abc")
    assert out[1]["read_error"] == "object vanished between listing and reading"
    assert out[2]["read_error"].startswith("object too large") and out[2]["data"] is None
    assert "unsafe key" in out[3]["read_error"] and out[3]["data"] is None


def test_an_output_copied_elsewhere_verifies_its_own_files_and_older_rows_still_verify(tmp_path):
    import pyarrow.parquet as pq

    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), model="tiny-ip2p")
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.jpg").write_bytes(encode(photo("astronaut", (64, 48)), "JPEG"))
    (tmp_path / "in" / "sub" / "b.png").write_bytes(encode(photo("coffee", (64, 48)), "PNG"))
    batch = reader.read_objects(pa.Table.from_pylist(list(reader.list_inputs(cfg))), input_uri=cfg.input_uri,
                                storage_options={}, max_pixels=cfg.max_pixels)
    rows = protect_rows(cfg, batch).to_pylist()
    assert [(r["status"], r["output_key"]) for r in rows] == [("ok", "images/a.jpg.png"), ("ok", "images/sub/b.png")]
    assert rows[0]["output_uri"] == f"file://{tmp_path}/out/images/a.jpg.png"   # still recorded, absolute

    shutil.copytree(tmp_path / "out", tmp_path / "moved")        # an OUTPUT synced or moved elsewhere
    for part in (tmp_path / "out" / "manifest").glob("part-*.parquet"):   # the original, as older runs wrote it
        pq.write_table(pq.read_table(part).drop_columns(["output_key"]), part)
    assert verify.verify(str(tmp_path / "out")).ok                         # older rows verify where they are
    (tmp_path / "out" / "images" / "a.jpg.png").write_bytes(b"altered")
    (tmp_path / "out" / "images" / "sub" / "b.png").unlink()
    moved = verify.verify(str(tmp_path / "moved"))
    assert moved.ok and moved.checked == 2, moved                 # its own files, not the original's
    original = verify.verify(str(tmp_path / "out"))
    assert original.modified == [f"file://{tmp_path}/out/images/a.jpg.png"]
    assert original.missing == [f"file://{tmp_path}/out/images/sub/b.png"]
    (tmp_path / "moved" / "images" / "a.jpg.png").write_bytes(b"altered")
    assert verify.verify(str(tmp_path / "moved")).modified == [f"file://{tmp_path}/moved/images/a.jpg.png"]


# -- end to end ---------------------------------------------------------------------------------

def manifest_rows(output_uri: str, options: dict | None = None) -> list[dict]:
    fs, root = storage.filesystem(output_uri, options)
    return provenance.read_manifest(fs, Output(fs, root).manifest_dir).to_pylist()


@pytest.mark.integration
def test_s3_bucket_to_bucket_with_bad_inputs_then_rerun_and_verify(s3_endpoint, ray_local, caplog):
    caplog.set_level(logging.DEBUG, logger="danp_pipeline")
    good, bad = {**good_photos(), **odd_photos()}, bad_inputs()
    unsafe = {"nested/../../escape.jpg": encode(photo("astronaut", (64, 64)), "JPEG")}
    sidecar = {"photos/2024/astronaut.jpg": ["give him a hat", "make it snow"]}
    files = {**good, **{k: v for k, (v, _) in bad.items()}, **unsafe, "prompts.json": json.dumps(sidecar).encode()}
    upload(s3_endpoint, "danp-archive", "in", files)
    options = s3_options(s3_endpoint)
    cfg = fast_config("s3://danp-archive/in", "s3://danp-protected/run", storage_options=options,
                      prompts_file="s3://danp-archive/in/prompts.json", batch_size=2, report=True, report_sample=2)
    upload(s3_endpoint, "danp-protected", "unrelated", {})

    summary = pipeline.run(cfg)

    assert (summary.ok, summary.errors, summary.skipped) == (len(good), len(bad) + 1, 0)
    assert summary.report_uri == "s3://danp-protected/run/report/index.html"      # the report, on the store
    assert caplog.records[-1].getMessage() == f"report: {summary.report_uri}"
    page = storage.filesystem(summary.report_uri, options)[0].cat_file(summary.report_uri).decode()
    assert f"<b>{len(good)}</b>protected" in page and f"<b>{len(bad) + 1}</b>errors" in page
    assert page.count('src="thumbs/') == 2 * 3 and SECRET_KEY not in page
    assert summary.total == len(files) - 1 and summary.output_uri == "s3://danp-protected/run"
    rows = {r["source_key"]: r for r in manifest_rows(cfg.output_uri, options)}
    assert set(rows) == set(files) - {"prompts.json"}  # one row per object, the sidecar is not a photo
    fs, _ = storage.filesystem(cfg.output_uri, options)
    for key, data in good.items():
        r = rows[key]
        assert r["status"] == "ok", (key, r["error"])
        assert r["source_uri"] == f"s3://danp-archive/in/{key}" and r["source_sha256"] == provenance.sha256_hex(data)
        assert r["output_uri"] == f"s3://danp-protected/run/images/{output_name(key, 'png')}"
        out = fs.cat_file(r["output_uri"])
        assert provenance.sha256_hex(out) == r["output_sha256"]
        assert check_linf(data, out, FAST_ATTACK.eps) == r["linf_levels"] <= FAST_ATTACK.linf_levels_bound
    for key, (_, reason) in bad.items():
        assert rows[key]["status"] == "error" and reason in rows[key]["error"], (key, rows[key]["error"])
    assert "unsafe key" in rows["nested/../../escape.jpg"]["error"]
    assert rows["photos/2024/astronaut.jpg"]["prompts"] == sidecar["photos/2024/astronaut.jpg"]
    assert rows["a/b.jpg"]["output_uri"] != rows["a/b.tiff"]["output_uri"]
    assert not fs.exists("danp-protected/escape.jpg.png") and not fs.exists("danp-protected/run/escape.jpg.png")
    manifest_text = json.dumps(list(rows.values()), default=str)
    assert SECRET_KEY not in manifest_text and SECRET_KEY not in caplog.text

    args = cli.command_parser("verify").parse_args([cfg.output_uri, "--storage-options", json.dumps(options),
                                                    "--threads", "4"])
    assert cli.run_command("verify", args) == 0

    again = pipeline.run(cfg)  # rerun: nothing new, nothing duplicated
    assert (again.ok, again.errors, again.skipped) == (0, 0, len(files) - 1)
    assert len(manifest_rows(cfg.output_uri, options)) == len(rows)

    tampered, deleted = rows["odd/rgba.png"]["output_uri"], rows["photos/camera.png"]["output_uri"]
    fs.pipe_file(tampered, fs.cat_file(tampered) + b"\0")
    fs.rm(deleted)
    fs.pipe_file("danp-protected/run/images/stray.png", b"not ours")
    report = verify.verify(cfg.output_uri, options)
    assert (report.modified, report.missing) == ([tampered], [deleted])
    assert report.unlisted == ["s3://danp-protected/run/images/stray.png"]
    caplog.clear()
    assert cli.run_command("verify", args) == 1
    assert tampered in caplog.text and deleted in caplog.text


def _operator(ds, name: str):
    """The logical operator of ``ds`` whose name mentions ``name`` (the graph is a chain)."""
    op = ds._logical_plan.dag
    while name not in op.name:
        (op,) = op.input_dependencies
    return op


@pytest.mark.integration
def test_job_graph_passes_no_deprecated_actor_options_and_keeps_actor_fault_tolerance(tmp_path, ray_local):
    """Ray 2.60 deprecates map_batches(**ray_remote_args); the actor restarts the job relies on are
    Ray Data's own defaults for actor pools, checked here so that a Ray upgrade cannot drop them silently."""
    from ray.data._internal.execution.operators.actor_pool_map_operator import (
        ActorPoolMapOperator,
    )
    from ray.data.context import DataContext
    from ray.util.annotations import RayDeprecationWarning

    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    item = {"source_key": "a.jpg", "source_uri": f"file://{tmp_path}/in/a.jpg", "path": str(tmp_path / "in/a.jpg"),
            "size": 1, "prompts": [], "reason": "new"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pipeline.dataset([item], pipeline.Run.start(cfg, "r1"))
    assert not [w for w in caught if issubclass(w.category, RayDeprecationWarning)], [str(w.message) for w in caught]
    protect = _operator(ds, "Protector")
    assert not set(pipeline.ACTOR_FAULT_TOLERANCE) & set(protect.ray_remote_args)  # nothing to override the defaults
    applied = ActorPoolMapOperator._apply_default_remote_args(protect.ray_remote_args, DataContext.get_current())
    assert {k: applied[k] for k in pipeline.ACTOR_FAULT_TOLERANCE} == pipeline.ACTOR_FAULT_TOLERANCE
    # The actor asks for the memory its editor and its largest photo need (tiny editor: the photo alone),
    # and never for more than the largest node has (such a request would wait forever).
    assert protect.ray_remote_args["memory"] == cfg.max_pixels * (
        C.ACTOR_BYTES_PER_PIXEL + (C.ACTOR_CALLS - 1) * C.ACTOR_WAITING_BYTES_PER_PIXEL)
    # Calls overlap in the actor (conversion beside protection), the Protector's lock keeps one on the editor.
    assert protect.compute.max_concurrent_calls_per_actor == C.ACTOR_CALLS >= 2
    assert protect.compute.enable_true_multi_threading
    largest = max(n["Resources"]["memory"] for n in ray_local.nodes() if n["Alive"])
    huge = _operator(pipeline.dataset([item], pipeline.Run.start(cfg.replace(actor_memory=10**15), "r1")), "Protector")
    assert huge.ray_remote_args["memory"] == int(largest)
    # The CPU stages around it hold no accelerator and ask for their own CPUs.
    # and memory for one photo of the largest size allowed.
    for stage, kind in (("decode_objects", "decode"), ("write_outputs", "write")):
        args = _operator(ds, stage).ray_remote_args
        assert args["num_cpus"] == cfg.cpus_per_task and not args.get("num_gpus"), (stage, args)
        assert args["memory"] == resources.task_memory(cfg, kind) > 0, (stage, args)
        assert _operator(ds, stage).compute.size == cfg.tasks_per_actor * cfg.actors


def test_actor_memory_counts_the_editors_weights_and_the_largest_photo(tmp_path):
    cfg = fast_config("in", "out", batch_size=2, max_pixels=1_000_000)
    photos = 2 * 1_000_000 * (C.ACTOR_BYTES_PER_PIXEL + (C.ACTOR_CALLS - 1) * C.ACTOR_WAITING_BYTES_PER_PIXEL)
    assert resources.actor_memory(cfg) == photos                                    # tiny: no files
    micro = sum(f.stat().st_size for part in resources.EDITOR_PARTS
                for f in (C.MICRO_EDITORS_DIR / "micro-ip2p" / part).glob("*.safetensors"))
    assert micro > 0 and resources.actor_memory(cfg.replace(model="micro-ip2p")) == micro + photos
    (tmp_path / "editor" / "unet").mkdir(parents=True)
    (tmp_path / "editor" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w" * 1000)
    (tmp_path / "editor" / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"w" * 500)
    assert resources.editor_bytes(str(tmp_path / "editor")) == 1000                 # the float32 files
    assert resources.editor_bytes("nobody/not-downloaded-xyz") == C.EDITOR_BYTES_UNKNOWN
    assert resources.actor_memory(cfg.replace(actor_memory=123)) == 123


@pytest.mark.integration
def test_a_changed_configuration_is_reported_as_such_not_as_new(tmp_path, ray_local):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(encode(photo("astronaut", (64, 64)), "JPEG"))
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    assert pipeline.run(cfg).ok == 1
    other = cfg.replace(attack=cfg.attack.replace(eps=0.02))
    assert pipeline.run(other).ok == 1
    old, new = (config_sha256(config_json(c.attack, c.model, c.revision, output_settings(c))) for c in (cfg, other))
    rows = {r["config_sha256"]: r for r in manifest_rows(cfg.output_uri)}
    assert rows[old]["reason"] == "new"
    assert rows[new]["reason"] == f"config changed ({old[:12]} → {new[:12]})"


@pytest.mark.integration
def test_a_status_file_that_cannot_be_rewritten_is_removed_not_left_claiming_done(tmp_path, ray_local, monkeypatch):
    """The last run's ``done`` must not stand when this run cannot write its own state (a full disk)."""
    import errno

    from danp_pipeline.job import progress

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"not a photo")
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_status.json").write_text(json.dumps({"run_id": "last", "state": "done"}))

    class FullDisk:
        def __getattr__(self, name):
            return getattr(storage, name)

        @staticmethod
        def atomic_write(fs, path, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(progress, "storage", FullDisk())
    pipeline.run(cfg)
    assert not (tmp_path / "out" / "_status.json").exists()


@pytest.mark.integration
def test_retry_errors_redoes_only_errors_and_keeps_one_row_each(tmp_path, ray_local, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(encode(photo("astronaut", (64, 64)), "JPEG"))
    (tmp_path / "in" / "b.jpg").write_bytes(b"")  # not yet uploaded completely
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    first = pipeline.run(cfg)
    assert (first.ok, first.errors) == (1, 1)
    (tmp_path / "in" / "b.jpg").write_bytes(encode(photo("coffee", (64, 64)), "JPEG"))
    assert pipeline.run(cfg).skipped == 2  # errors are final by default
    retried = pipeline.run(cfg.replace(retry_errors=True))
    assert (retried.ok, retried.errors, retried.skipped) == (1, 0, 1)
    rows = manifest_rows(cfg.output_uri)
    assert sorted((r["source_key"], r["status"]) for r in rows) == [("a.jpg", "ok"), ("b.jpg", "ok")]
    assert verify.verify(cfg.output_uri).ok

    # The rows say what the photos are protected against: other prompts redo them, one row each.
    # With the compaction threshold at 2 parts, the run also merges its per-photo parts into one.
    fs, root = storage.filesystem(cfg.output_uri)
    manifest_dir = Output(fs, root).manifest_dir
    assert len(provenance.list_parts(fs, manifest_dir)) == 2
    monkeypatch.setattr(writer, "COMPACT_MIN_PARTS", 2)
    reprompted = pipeline.run(cfg.replace(prompts=("make it snow",)))
    assert (reprompted.ok, reprompted.errors, reprompted.skipped) == (2, 0, 0)
    assert len(provenance.list_parts(fs, manifest_dir)) == 1
    rows = manifest_rows(cfg.output_uri)
    assert sorted((r["source_key"], r["reason"], tuple(r["prompts"])) for r in rows) == [
        ("a.jpg", "prompts changed", ("make it snow",)), ("b.jpg", "prompts changed", ("make it snow",))]
    assert verify.verify(cfg.output_uri).ok


def _cli(*args: str) -> list[str]:
    exe = shutil.which("danp-protect", path=os.path.dirname(sys.executable))
    return [exe, *args] if exe else [sys.executable, "-c", "from danp_pipeline.cli import cli_main; cli_main()", *args]


@pytest.mark.integration
def test_killed_run_resumes_without_loss_or_duplication_through_the_cli(s3_endpoint, ray_local, tmp_path):
    """The first run starts its own local Ray (the CLI's default) and is killed, with all its
    processes, after its driver committed its second part (of one row each); the rerun joins the session's Ray
    cluster through
    RAY_ADDRESS (2 CPUs) and must finish, exit 0, without recomputing a committed photo."""
    photos = {f"day{i}/img{i}.jpg": encode(photo(name, (64, 48)), "JPEG")
              for i, name in enumerate(["astronaut", "chelsea", "coffee", "camera", "astronaut"])}
    upload(s3_endpoint, "danp-crash", "in", photos)
    env = s3_env(s3_endpoint)  # credentials and endpoint through the standard AWS variables only
    upload(s3_endpoint, "danp-out", "unrelated", {})
    command = _cli("run", "s3://danp-crash/in", "s3://danp-out/crash", "--batch-size", "1", "--commit-rows", "1",
                   "--lease-ttl", "5", "--wait", "120", *FAST_ARGS)   # the killed run's lease expires in 5 s
    options = s3_options(s3_endpoint)
    fs = storage.filesystem("s3://danp-out", {**options, "skip_instance_cache": True})[0]

    log = open(tmp_path / "crash.log", "wb")
    proc = subprocess.Popen(command, env={**env, HANG_AFTER_PARTS_ENV: "2"}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # the fault hook stops this driver, not the session's
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while len(provenance.list_parts(fs, "danp-out/crash/manifest")) < 2:
            assert proc.poll() is None, (tmp_path / "crash.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no manifest part appeared"
            time.sleep(1)
    finally:
        kill_session(proc)  # the driver, its Ray instance and its workers
    committed = manifest_rows("s3://danp-out/crash", options)
    assert len(committed) == 2  # the driver stopped after its second part: nothing else was committed

    cluster = {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    done = subprocess.run(command, env={**env, **cluster}, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 ok, 0 error, 2 skipped" in done.stderr

    rows = manifest_rows("s3://danp-out/crash", options)
    assert sorted(r["source_key"] for r in rows) == sorted(photos)  # every photo exactly once
    assert all(r["status"] == "ok" for r in rows)
    by_key = {r["source_key"]: r for r in rows}
    for old in committed:  # committed rows untouched, their photos not recomputed
        assert by_key[old["source_key"]] == old
    assert len({r["run_id"] for r in rows}) == 2
    assert verify.verify("s3://danp-out/crash", options).ok
    assert SECRET_KEY not in done.stderr + (tmp_path / "crash.log").read_text()


@pytest.mark.integration
def test_a_photo_that_crashes_its_actor_every_time_ends_as_an_error_row(tmp_path):
    """The actor process exits (os._exit, as in a native crash) whenever it protects one photo. Ray
    restarts it and retries the batch; after max_photo_attempts deaths the photo is an error row and
    the job completes. The run starts its own local Ray so that the fault hook reaches its actors."""
    names = ["astronaut", "chelsea", "coffee", "camera", "astronaut", "coffee"]
    keys = [f"p{i}.jpg" for i in range(len(names))]
    (tmp_path / "in").mkdir()
    for key, name in zip(keys, names):
        (tmp_path / "in" / key).write_bytes(encode(photo(name, (64, 48)), "JPEG"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    done = subprocess.run(_cli("run", str(tmp_path / "in"), str(tmp_path / "out"), "--batch-size", "2",
                               "--max-photo-attempts", "2", *FAST_ARGS),
                          env={**env, CRASH_ON_KEY_ENV: "p3.jpg"}, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 3, done.stderr[-3000:]                  # finished, with an error row
    assert "6 objects: 5 ok, 1 error" in done.stderr, done.stderr[-3000:]
    assert "1 error row(s): the worker process died 2 times" in done.stderr and "(e.g. p3.jpg)" in done.stderr
    rows = {r["source_key"]: r for r in manifest_rows(str(tmp_path / "out"))}
    assert sorted(rows) == keys and len(manifest_rows(str(tmp_path / "out"))) == len(keys)  # each exactly once
    assert rows["p3.jpg"]["status"] == "error" and rows["p3.jpg"]["output_uri"] is None
    error = rows["p3.jpg"]["error"]
    assert error.startswith("the worker process died 2 times while protecting this photo"), error
    assert all(rows[k]["status"] == "ok" for k in keys if k != "p3.jpg"), [r["error"] for r in rows.values()]
    assert not list((tmp_path / "out" / "_attempts").iterdir())
    assert verify.verify(str(tmp_path / "out")).ok
    report = tmp_path / "out" / "report" / "index.html"           # written at the end; the last line says where
    last = done.stderr.strip().splitlines()[-1]
    assert report.exists() and f"report: {report.as_uri()}" in last, last
    assert "<b>5</b>protected" in report.read_text() and "the worker process died N times" in report.read_text()


@pytest.mark.integration
def test_stopping_a_run_is_not_a_crash(tmp_path, ray_local):
    """SIGTERM (a deadline: timeout, cron, Kubernetes) and SIGINT (Ctrl-C) while a photo is in flight end
    the run cleanly: exit 128 + signal, status ``stopped``, one line, and no death counted. Stopped three
    times, the photo is then protected ``ok`` although max_photo_attempts is 3. The runs start their
    own local Ray (the CLI's default); the actor holds its batch once the attempt is recorded."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(encode(photo("astronaut", (64, 48)), "JPEG"))
    command = _cli("run", str(tmp_path / "in"), str(tmp_path / "out"), "--max-photo-attempts", "3", *FAST_ARGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    attempts = tmp_path / "out" / "_attempts"
    for n, sig in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGTERM]):
        log = tmp_path / f"stop{n}.log"
        proc = subprocess.Popen(command, env={**env, HOLD_UNTIL_FILE_ENV: str(tmp_path / "never")},
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (attempts.is_dir() and list(attempts.iterdir())):          # the photo is in flight
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            os.kill(proc.pid, sig)
            assert proc.wait(timeout=120) == 128 + sig, log.read_text()[-3000:]
        finally:
            kill_session(proc)
        text = log.read_text()
        assert f"stopped by {sig.name}: the run stopped cleanly" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert json.loads((tmp_path / "out" / "_status.json").read_text())["state"] == "stopped"
        assert not list(attempts.iterdir())                                   # no death counted
    cluster = {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    done = subprocess.run(command, env={**env, **cluster}, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = manifest_rows(str(tmp_path / "out"))
    assert [(r["source_key"], r["status"]) for r in rows] == [("a.jpg", "ok")]

