"""Scheduled ingestion: the ledger decides what is new or changed, the lease keeps runs apart."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from helpers import encode, fast_config, photo, s3_client, s3_options, upload

from danp_pipeline import storage
from danp_pipeline.job import ingest, pipeline
from danp_pipeline.job.identity import Run
from danp_pipeline.manifest import ledger, provenance, verify
from danp_pipeline.manifest.output import LOCK_NAME, Output
from danp_pipeline.storage.lease import Lease, LockHeld


def jpeg(name: str, size=(64, 48), quality=90) -> bytes:
    return encode(photo(name, size), "JPEG", quality=quality)


def current(output_uri: str, options: dict | None = None) -> dict[str, dict]:
    fs, root = storage.filesystem(output_uri, {**(options or {}), "skip_instance_cache": True})
    rows = provenance.read_manifest(fs, Output(fs, root).manifest_dir).to_pylist()
    keys = [r["source_key"] for r in rows]
    assert len(keys) == len(set(keys)), f"more than one row for a photo: {sorted(keys)}"
    return {r["source_key"]: r for r in rows}


# -- the ledger, and the distributed plan that must give its answers ------------------------------

@pytest.fixture(params=["ledger", pytest.param("distributed", marks=pytest.mark.integration)])
def planner(request, tmp_path):
    """``ledger.decide`` on the whole index, or the job's plan (job/planning.py, which asks it per hash
    partition): the items as a Ray Dataset joined with the index written as a manifest, on the session's
    local Ray. Both must give the same answers."""
    if request.param == "ledger":
        return ledger.decide
    import pyarrow as pa
    import ray

    from danp_pipeline.config import PipelineConfig
    from danp_pipeline.job import planning
    from danp_pipeline.job.listing import LISTING_SCHEMA

    request.getfixturevalue("ray_local")
    runs = iter(range(100))

    def distributed(items, index, config_sha, *, retry_errors=False, detect_changes=False, prompts=None):
        output = Output.open(str(tmp_path / f"out{next(runs)}"))
        output.commit(index.to_pylist())
        cfg = PipelineConfig(input_uri="s3://b", output_uri=output.uri, retry_errors=retry_errors,
                             detect_changes=detect_changes, plan_partitions=2)
        listed = ray.data.from_arrow(pa.Table.from_pylist(items, schema=LISTING_SCHEMA))
        result = planning.plan(listed, Run(cfg, "r", "{}", config_sha), prompts=prompts)
        order = {item["source_uri"]: n for n, item in enumerate(items)}
        todo = sorted(result.todo().take_all(), key=lambda item: order[item["source_uri"]])
        assert (result.listed, result.todo_count) == (len(items), len(todo))
        return todo

    return distributed


def test_plan_processes_new_changed_and_retried_objects_and_skips_the_rest(planner):
    def listed(key, size, etag):
        return {"source_key": key, "source_uri": f"s3://b/{key}", "size": size, "source_etag": etag}

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [provenance.make_row(source_uri=f"s3://b/{k}", status=st, config_sha256="c1", source_sha256=sha,
                                source_bytes=n, source_etag=e, finished_at=t0 + timedelta(minutes=m))
            for k, st, sha, n, e, m in [("same.jpg", "ok", "a" * 64, 10, "etag:1", 0),
                                         ("edited.jpg", "ok", "b" * 64, 10, "etag:2", 0),
                                         ("resized.jpg", "ok", "c" * 64, 10, "etag:3", 0),
                                         ("broken.jpg", "error", None, None, "etag:4", 0),
                                         ("legacy.jpg", "ok", "d" * 64, 10, None, 0)]]
    index = provenance.to_table(rows).select(list(ledger.LEDGER_COLUMNS))
    items = [listed("same.jpg", 10, "etag:1"), listed("edited.jpg", 10, "etag:9"), listed("resized.jpg", 11, "etag:3"),
             listed("broken.jpg", 5, "etag:4"), listed("legacy.jpg", 10, "etag:7"), listed("fresh.jpg", 3, "etag:5")]
    plan = {i["source_key"]: i for i in planner(items, index, "c1", detect_changes=True)}
    assert {k: i["reason"] for k, i in plan.items()} == {"edited.jpg": "changed", "resized.jpg": "changed",
                                                         "fresh.jpg": "new"}
    assert plan["edited.jpg"]["previous_sha256"] == "b" * 64
    assert [i["source_key"] for i in planner(items, index, "c1")] == ["fresh.jpg"]  # plain run: no change check
    retried = planner(items, index, "c1", retry_errors=True)
    assert [(i["source_key"], i["reason"]) for i in retried] == [("broken.jpg", "retry"), ("fresh.jpg", "new")]
    assert len(planner(items, index, "other-config")) == len(items)


def test_plan_redoes_a_photo_protected_against_other_prompts(planner):
    def listed(key, prompts=()):
        return {"source_key": key, "source_uri": f"s3://b/{key}", "size": 1, "prompts": list(prompts)}

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [provenance.make_row(source_uri=f"s3://b/{k}", status=st, config_sha256="c1", prompts=p, finished_at=t0)
            for k, st, p in [("run-prompts.jpg", "ok", ["add fire"]), ("own-prompts.jpg", "ok", ["make it snow"]),
                             ("failed.jpg", "error", ["other"]), ("legacy.jpg", "ok", None)]]
    index = provenance.to_table(rows).select(list(ledger.LEDGER_COLUMNS))
    items = [listed("run-prompts.jpg"), listed("own-prompts.jpg", ["make it snow"]), listed("failed.jpg"),
             listed("legacy.jpg")]

    def todo(**kw):
        return [(i["source_key"], i["reason"]) for i in planner(items, index, "c1", **kw)]

    assert todo(prompts=["add fire"]) == []                     # same prompts: nothing to redo
    assert todo(prompts=["add fire", "put her in a prison cell"]) == [("run-prompts.jpg", "prompts changed")]
    assert todo() == []                                         # no prompts given: no prompts check
    items[1]["prompts"] = ["make it rain"]                      # the sidecar entry changed
    assert todo(prompts=["add fire"]) == [("own-prompts.jpg", "prompts changed")]


# -- the lease (no Ray) -----------------------------------------------------------------------------

def test_local_lock_excludes_a_second_run_until_released(tmp_path):
    fs, root = storage.filesystem(str(tmp_path / "out"))
    path = Output(fs, root).lock_path
    with Lease(fs, path, ttl_s=60) as first:
        with pytest.raises(LockHeld, match="another run holds the lease on OUTPUT since 20") as held:
            Lease(fs, path, ttl_s=60).acquire()
        assert first.owner in str(held.value)
        started = time.monotonic()
        with pytest.raises(LockHeld):
            Lease(fs, path, ttl_s=60, wait_s=0.3, poll_s=0.1).acquire()
        assert time.monotonic() - started >= 0.3
    with Lease(fs, path, ttl_s=60):  # released: the next run gets it
        pass


@pytest.mark.integration
def test_s3_lock_uses_conditional_writes_and_takes_over_only_an_expired_lease(s3_endpoint):
    upload(s3_endpoint, "danp-lock", "x", {})
    options = {**s3_options(s3_endpoint), "skip_instance_cache": True}
    fs, _ = storage.filesystem("s3://danp-lock", options)
    path = f"danp-lock/out/{LOCK_NAME}"
    first = Lease(fs, path, ttl_s=60)
    first.acquire()
    with pytest.raises(LockHeld, match="another run holds the lease on OUTPUT since"):
        Lease(fs, path, ttl_s=60).acquire()
    first.release()
    assert not fs.exists(path)

    # a holder that died: its lease expired, and exactly one of two successors takes it over
    stale = {"owner": "dead-host:1:abc", "since": "2026-01-01T00:00:00+00:00", "expires": "2026-01-01T01:00:00+00:00"}
    s3_client(s3_endpoint).put_object(Bucket="danp-lock", Key=f"out/{LOCK_NAME}", Body=json.dumps(stale).encode())
    fs.invalidate_cache()
    stale_etag = fs.info(path)["ETag"]
    winner = Lease(fs, path, ttl_s=60)
    winner.acquire()
    loser = Lease(fs, path, ttl_s=60)
    with pytest.raises(OSError):  # the loser's take-over, conditional on the stale ETag, is refused
        loser._s3("put_object", Body=loser._payload(), IfMatch=stale_etag)
    assert json.loads(fs.cat_file(path))["owner"] == winner.owner
    winner.release()


# -- end to end -------------------------------------------------------------------------------------

@pytest.mark.integration
def test_ingest_protects_only_new_then_changed_photos_on_s3(s3_endpoint, ray_local):
    options = s3_options(s3_endpoint)
    upload(s3_endpoint, "danp-ingest", "in", {"day1/a.jpg": jpeg("astronaut"), "day1/b.jpg": jpeg("chelsea")})
    upload(s3_endpoint, "danp-ingest-out", "unrelated", {})
    cfg = fast_config("s3://danp-ingest/in", "s3://danp-ingest-out/archive", storage_options=options)

    first = ingest.ingest(cfg)
    assert (first.ok, first.errors, first.skipped) == (2, 0, 0)
    rows = current(cfg.output_uri, options)
    assert {r["reason"] for r in rows.values()} == {"new"} and all(r["source_etag"] for r in rows.values())

    upload(s3_endpoint, "danp-ingest", "in", {"day2/c.jpg": jpeg("coffee"), "day2/d.jpg": jpeg("camera")})
    second = ingest.ingest(cfg)
    assert (second.ok, second.skipped) == (2, 2)
    rows = current(cfg.output_uri, options)
    assert sorted(rows) == ["day1/a.jpg", "day1/b.jpg", "day2/c.jpg", "day2/d.jpg"]
    assert rows["day1/a.jpg"]["run_id"] == first.run_id and rows["day2/c.jpg"]["run_id"] == second.run_id

    old_sha = rows["day1/b.jpg"]["source_sha256"]
    edited = jpeg("chelsea", quality=60)
    upload(s3_endpoint, "danp-ingest", "in", {"day1/b.jpg": edited})
    third = ingest.ingest(cfg)
    assert (third.ok, third.skipped) == (1, 3)
    rows = current(cfg.output_uri, options)
    b = rows["day1/b.jpg"]
    new_sha = provenance.sha256_hex(edited)
    assert b["status"] == "ok" and b["source_sha256"] == new_sha and b["run_id"] == third.run_id
    assert b["reason"] == f"changed (sha256 {old_sha[:12]}→{new_sha[:12]})"
    assert verify.verify(cfg.output_uri, options).ok

    # New bytes that fail: the error row replaces the ok row and the old photo's protection goes too.
    old_output = rows["day1/a.jpg"]["output_uri"]
    upload(s3_endpoint, "danp-ingest", "in", {"day1/a.jpg": b"\xff\xd8 not a jpeg any more"})
    fourth = ingest.ingest(cfg)
    assert (fourth.ok, fourth.errors, fourth.skipped) == (0, 1, 3)
    rows = current(cfg.output_uri, options)
    a = rows["day1/a.jpg"]
    assert a["status"] == "error" and a["reason"].startswith("changed (sha256 ") and a["output_uri"] is None
    assert not storage.filesystem(old_output, options)[0].exists(old_output)
    report = verify.verify(cfg.output_uri, options)
    assert report.ok and report.checked == 3, report

    assert ingest.ingest(cfg).ok == 0  # nothing new: nothing done


@pytest.mark.integration
def test_overlapping_ingest_runs_never_protect_a_photo_twice(tmp_path, ray_local):
    (tmp_path / "in").mkdir()
    for i, name in enumerate(["astronaut", "chelsea", "coffee"]):
        (tmp_path / "in" / f"{i}.jpg").write_bytes(jpeg(name))
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    lock_path = tmp_path / "out" / LOCK_NAME
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.update(first=ingest.ingest(cfg)))
    first.start()
    try:
        deadline = time.monotonic() + 120
        while not (lock_path.exists() and lock_path.stat().st_size):  # the first run holds the lease
            assert first.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        results["second"] = ingest.ingest(cfg)  # overlaps the first: refused at once
    finally:
        first.join(timeout=300)
    assert results["second"] is None
    assert results["first"].ok == 3
    rows = current(cfg.output_uri)
    assert sorted(rows) == ["0.jpg", "1.jpg", "2.jpg"] and all(r["status"] == "ok" for r in rows.values())
    assert len({r["run_id"] for r in rows.values()}) == 1
    assert ingest.ingest(cfg).skipped == 3


@pytest.mark.integration
def test_two_runs_started_together_protect_every_photo_once(tmp_path, ray_local):
    """``run`` holds the lease too: of two runs started together on one OUTPUT, the second waits for the
    first and then finds everything done. The work is counted as rows ever committed (every part)."""
    (tmp_path / "in").mkdir()
    for i, name in enumerate(["astronaut", "chelsea", "coffee"]):
        (tmp_path / "in" / f"{i}.jpg").write_bytes(jpeg(name))
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), lease_wait_s=300)
    results: dict[str, object] = {}
    runs = [threading.Thread(target=lambda name=name: results.update({name: pipeline.run(cfg)})) for name in "ab"]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=600)
    assert sorted((s.ok, s.skipped) for s in results.values()) == [(0, 3), (3, 0)]
    committed = Output.open(cfg.output_uri).read()
    assert committed.num_rows == 3 and set(committed["status"].to_pylist()) == {"ok"}


def test_a_run_refuses_an_output_whose_lease_another_holds(tmp_path):
    """No Ray, no work: the lease is taken before anything starts, and the refusal names the holder."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg("astronaut"))
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    fs, root = storage.filesystem(cfg.output_uri)
    with Lease(fs, Output(fs, root).lock_path, ttl_s=60) as holder:
        with pytest.raises(LockHeld, match=holder.owner):
            pipeline.run(cfg)
        assert ingest.ingest(cfg) is None        # an ingest does nothing and says so
    assert not (tmp_path / "out" / "manifest").exists()

