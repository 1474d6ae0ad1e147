"""Listing at scale (job/listing.py): input lists, S3 Inventory reports and prefix fan-out give the
same rows as today's serial listing, read by Ray tasks; the plan (job/planning.py) drops duplicates
and cleans superseded rows; progress (job/progress.py) lands in OUTPUT/_status.json."""

from __future__ import annotations

import gzip
import json
import os
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import fast_config, s3_client, s3_options, upload

from danp_pipeline import storage
from danp_pipeline.job import listing, planning, progress, reader
from danp_pipeline.job.identity import Run
from danp_pipeline.job.inventory import _inventory_files
from danp_pipeline.job.listing import _normalize, _Scope, fan_out_units
from danp_pipeline.manifest import provenance
from danp_pipeline.manifest.output import STATUS_NAME, Output


def tree(root, keys: list[str]) -> None:
    for i, key in enumerate(keys):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i + 1))


KEYS = ["top.jpg", "a/one.jpg", "a/b/two.png", "a/b/c/three.jpg", "d/four.jpg", "d/e/f/g/five.jpg"]


def serial(cfg, prompts=None) -> dict[str, tuple]:
    """Today's listing on the driver, as {key: (uri, path, size, etag, prompts)}."""
    return {i["source_key"]: (i["source_uri"], i["path"], i["size"], i["source_etag"], i["prompts"])
            for i in reader.list_inputs(cfg, prompts)}


def objects(ds) -> list[dict]:
    """The listed objects (listing tasks that find nothing yield a placeholder row without a URI)."""
    return [r for r in ds.take_all() if r["source_uri"] is not None]


def rows(ds) -> dict[str, tuple]:
    found = objects(ds)
    assert len({r["source_key"] for r in found}) == len(found)
    return {r["source_key"]: (r["source_uri"], r["path"], r["size"], r["source_etag"], list(r["prompts"] or []))
            for r in found}


# -- no Ray -----------------------------------------------------------------------------------------

def test_fan_out_walks_directories_only_down_to_its_depth(tmp_path):
    tree(tmp_path / "in", KEYS)
    root = str(tmp_path / "in")
    units = fan_out_units(root, {}, 2, [f"file://{tmp_path}/in/d"])
    assert units == [{"kind": "files", "dir": root}, {"kind": "files", "dir": f"{root}/a"},
                     {"kind": "tree", "dir": f"{root}/a/b"}]    # d/ (OUTPUT here) is never walked
    assert fan_out_units(root, {}, 0, []) == [{"kind": "tree", "dir": root}]
    assert fan_out_units(f"{root}/top.jpg", {}, 2, []) == [{"kind": "file", "dir": f"{root}/top.jpg"}]


def test_list_rows_are_normalized_under_input_and_outsiders_become_error_rows(tmp_path):
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "in" / "out"))
    scope = _Scope.of(cfg, {"a.jpg": ("give him a hat",)}, None)
    batch = pa.table({"uri": [f"file://{tmp_path}/in/a.jpg", f"{tmp_path}/in/b/c.jpg", f"file://{tmp_path}/x.jpg",
                              f"file://{tmp_path}/in/out/images/a.jpg.png", f"file://{tmp_path}/in/dir/"],
                      "size": [1, 2, 3, 4, 0], "etag": ['"abc"', None, "etag:z", None, None],
                      "prompts": [None, '["snow", "rain"]', "fire", None, None]})
    out = {r["source_uri"]: r for r in _normalize(batch, scope=scope, url_encoded=False).to_pylist()}
    assert sorted(out) == [f"file://{tmp_path}/in/a.jpg", f"file://{tmp_path}/in/b/c.jpg", f"file://{tmp_path}/x.jpg"]
    a, c = out[f"file://{tmp_path}/in/a.jpg"], out[f"file://{tmp_path}/in/b/c.jpg"]
    assert (a["source_key"], a["path"], a["size"], a["source_etag"]) == ("a.jpg", f"{tmp_path}/in/a.jpg", 1, "etag:abc")
    assert a["prompts"] == ["give him a hat"] and c["prompts"] == ["snow", "rain"] and c["source_key"] == "b/c.jpg"
    outsider = out[f"file://{tmp_path}/x.jpg"]
    assert outsider["read_error"].startswith("listed object is not under INPUT") and outsider["path"] is None
    keyed = _normalize(pa.table({"key": ["k/1.jpg"]}), scope=scope, url_encoded=False).to_pylist()
    assert keyed[0]["source_uri"] == f"file://{tmp_path}/in/k/1.jpg" and keyed[0]["size"] is None
    with pytest.raises(ValueError, match="'uri' or a 'key' column"):
        _normalize(pa.table({"name": ["x"]}), scope=scope, url_encoded=False)


def test_s3_inventory_manifest_names_its_data_files_and_columns(tmp_path):
    manifest = {"sourceBucket": "photos", "destinationBucket": "arn:aws:s3:::inventories", "version": "2016-11-30",
                "fileFormat": "CSV", "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, "
                                                   "LastModifiedDate, ETag, StorageClass",
                "files": [{"key": "inv/photos/all/data/1.csv.gz", "size": 10, "MD5checksum": "x"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    fs, path = storage.filesystem(str(tmp_path / "manifest.json"))
    fmt, files, names = _inventory_files(fs, path)
    assert (fmt, files) == ("csv", ["inventories/inv/photos/all/data/1.csv.gz"])
    assert names == ["bucket", "key", "version_id", "is_latest", "is_delete_marker", "size", "last_modified_date",
                     "e_tag", "storage_class"]
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "fileFormat": "ORC"}))
    with pytest.raises(ValueError, match="'ORC' is not supported"):
        _inventory_files(fs, path)


def test_listing_settings_are_validated_and_parsed_by_the_cli():
    from danp_pipeline import cli
    from danp_pipeline.config import PipelineConfig

    for field, value in [("plan_partitions", 0), ("input_list", " "), ("progress_interval_s", 0),
                         ("list_fanout_depth", -1)]:
        with pytest.raises(ValueError, match=field):
            PipelineConfig("in", "out", **{field: value})
    args = cli.build_parser().parse_args(["run", "in", "out", "--input-list", "s3://inv/manifest.json",
                                          "--plan-partitions", "8", "--progress-interval", "5"])
    cfg = cli.pipeline_config(args)
    assert (cfg.input_list, cfg.plan_partitions, cfg.progress_interval_s) == ("s3://inv/manifest.json", 8, 5.0)


# -- with Ray ---------------------------------------------------------------------------------------

@pytest.mark.integration
def test_fan_out_and_list_files_give_todays_listing(tmp_path, ray_local):
    tree(tmp_path / "in", [*KEYS, "prompts.json", "out/images/top.jpg.png"])
    prompts = {"a/one.jpg": ("make it snow",)}
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "in" / "out"),
                      prompts_file=str(tmp_path / "in/prompts.json"))
    expected = serial(cfg, prompts)
    assert sorted(expected) == sorted(KEYS)
    for depth in (0, 1, 3):
        assert rows(listing.dataset(cfg.replace(list_fanout_depth=depth), prompts)) == expected, depth

    uris = [v[0] for v in expected.values()] * 2      # a list may name an object twice
    table = pa.table({"uri": uris, "size": [v[2] for v in expected.values()] * 2,
                      "etag": [v[3] for v in expected.values()] * 2})
    pq.write_table(table, tmp_path / "list.parquet")
    (tmp_path / "csv").mkdir()
    table.slice(0, 3).to_pandas().to_csv(tmp_path / "csv" / "1.csv", index=False)
    table.slice(3).to_pandas().to_csv(tmp_path / "csv" / "2.csv", index=False)
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    for name in ("list.parquet", "csv", "list.jsonl"):
        ds = listing.dataset(cfg.replace(input_list=str(tmp_path / name)), prompts)
        found = objects(ds)
        assert len(found) == 2 * len(expected), name
        assert {r["source_key"]: (r["source_uri"], r["path"], r["size"], r["source_etag"], list(r["prompts"] or []))
                for r in found} == expected, name


@pytest.mark.integration
def test_list_files_are_read_one_task_each_in_bounded_tables_and_empty_ones_add_nothing(tmp_path, ray_local,
                                                                                      monkeypatch):
    from danp_pipeline.job import inventory

    tree(tmp_path / "in", KEYS)
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    uris = [f"file://{tmp_path}/in/{k}" for k in KEYS]
    for fmt in ("parquet", "csv", "jsonl"):
        folder = tmp_path / f"list-{fmt}"
        folder.mkdir()
        parts = [uris[:2], uris[2:5], uris[5:], []]          # the last file has no rows
        for i, part in enumerate(parts):
            table = pa.table({"uri": pa.array(part, pa.string())})
            if fmt == "parquet":
                pq.write_table(table, folder / f"{i}.parquet")
            elif fmt == "csv":
                (folder / f"{i}.csv").write_text("uri\n" + "".join(u + "\n" for u in part))
            else:
                (folder / f"{i}.jsonl").write_text("".join(json.dumps({"uri": u}) + "\n" for u in part))
        ds = listing.dataset(cfg.replace(input_list=str(folder)), {}).materialize()
        assert sorted(r["source_key"] for r in objects(ds)) == sorted(KEYS), fmt
        assert ds.num_blocks() >= len(parts), fmt          # one read task (and block) per list file
    # a task streams its file in tables of LIST_READ_ROWS rows, never the whole file at once
    monkeypatch.setattr(inventory, "LIST_READ_ROWS", 2)
    reader_ = inventory._ListReader(str(tmp_path / "list-parquet"), {}, "parquet", None)
    sizes = [t.num_rows for t in reader_(pa.table({"list_file": [str(tmp_path / "list-parquet" / "1.parquet")]}))]
    assert sizes == [2, 1]


@pytest.mark.integration
def test_s3_inventory_and_s3_fan_out_list_the_same_objects(s3_endpoint, ray_local, tmp_path):
    options = s3_options(s3_endpoint)
    keys = ["2024/a b+c.jpg", "2024/x/é.png", "2025/d.jpg", "top.jpg"]
    upload(s3_endpoint, "danp-inv-src", "in", {k: k.encode() for k in keys})
    cfg = fast_config("s3://danp-inv-src/in", "s3://danp-inv-out/run", storage_options=options)
    expected = serial(cfg)
    assert sorted(expected) == sorted(keys)
    assert rows(listing.dataset(cfg, {})) == expected

    # An S3 Inventory report, as S3 delivers it: gzip CSV without header (keys URL-encoded), an old
    # version and a delete marker that must not be listed, plus one Parquet report of the same day.
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="danp-inv-reports")
    objects = [client.head_object(Bucket="danp-inv-src", Key=f"in/{k}") for k in keys]
    from urllib.parse import quote_plus

    lines = [f'"danp-inv-src","{quote_plus("in/" + k, safe="/")}","v1","true","false","{o["ContentLength"]}",'
             f'"2026-01-01T00:00:00.000Z",{o["ETag"]}' for k, o in zip(keys[:2], objects[:2])]
    lines += ['"danp-inv-src","in/2024/old.jpg","v0","false","false","5","2026-01-01T00:00:00.000Z","e"',
              '"danp-inv-src","in/2024/gone.jpg","v2","true","true","","2026-01-01T00:00:00.000Z",""']
    client.put_object(Bucket="danp-inv-reports", Key="inv/data/1.csv.gz", Body=gzip.compress("\n".join(lines).encode()))
    parquet = pa.table({"bucket": ["danp-inv-src"] * 2, "key": [f"in/{k}" for k in keys[2:]],
                        "size": [o["ContentLength"] for o in objects[2:]],
                        "e_tag": [o["ETag"].strip('"') for o in objects[2:]]})
    sink = pa.BufferOutputStream()
    pq.write_table(parquet, sink)
    client.put_object(Bucket="danp-inv-reports", Key="inv/data/2.parquet", Body=sink.getvalue().to_pybytes())
    csv_schema = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag"
    for fmt, files, schema in [("CSV", ["inv/data/1.csv.gz"], csv_schema),
                               ("Parquet", ["inv/data/2.parquet"], "message s3.inventory { }")]:
        manifest = {"sourceBucket": "danp-inv-src", "destinationBucket": "arn:aws:s3:::danp-inv-reports",
                    "fileFormat": fmt, "fileSchema": schema, "files": [{"key": f, "size": 1} for f in files]}
        client.put_object(Bucket="danp-inv-reports", Key=f"inv/{fmt}/manifest.json", Body=json.dumps(manifest).encode())
    found = {}
    for fmt in ("CSV", "Parquet"):
        found.update(rows(listing.dataset(cfg.replace(input_list=f"s3://danp-inv-reports/inv/{fmt}/manifest.json"),
                                          {})))
    assert found == expected


@pytest.mark.integration
def test_plan_drops_listed_duplicates_and_removes_superseded_rows_and_orphans(tmp_path, ray_local):
    tree(tmp_path / "in", ["a.jpg", "b.jpg"])
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), plan_partitions=2,
                      input_list=str(tmp_path / "list.jsonl"))
    uri = f"file://{tmp_path}/in"
    (tmp_path / "list.jsonl").write_text("".join(json.dumps({"key": k}) + "\n" for k in ["a.jpg", "b.jpg", "a.jpg"]))
    output = Output.open(cfg.output_uri)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    stale = f"{output.uri}/images/old.png"
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "images" / "old.png").write_bytes(b"old")
    output.commit([provenance.make_row(source_uri=f"{uri}/a.jpg", status="error", config_sha256="c", finished_at=t0,
                                       output_uri=stale, source_sha256="1" * 64)])
    output.commit([provenance.make_row(source_uri=f"{uri}/a.jpg", status="ok", config_sha256="c",
                                       finished_at=t0.replace(hour=2), source_sha256="2" * 64, prompts=["p"])])
    result = planning.plan(listing.dataset(cfg, {}), Run(cfg, "r", "{}", "c"), prompts=["p"])
    assert (result.listed, result.duplicates, result.skipped, result.reasons, result.losers) == (2, 1, 1, {"new": 1}, 1)
    assert [r["source_key"] for r in result.todo().take_all()] == ["b.jpg"]
    assert planning.remove_superseded(result, cfg) == 1
    assert [r["status"] for r in output.read().to_pylist()] == ["ok"]
    assert not (tmp_path / "out" / "images" / "old.png").exists()


@pytest.mark.integration
def test_status_file_and_progress_line(tmp_path, ray_local):
    output = Output.open(str(tmp_path / "out"))
    with progress.Reporter(output, "r1", interval_s=3600) as report:
        import ray

        ray.get(report.counter.add.remote(listed=7))
        assert report.write()["listed"] == 7
        report.planned(listed=10, planned=4, skipped=6, reasons={"new": 4})
        report.protected(ok=1, errors=1)
        status = json.loads((tmp_path / "out" / STATUS_NAME).read_text())
        assert (status["state"], status["listed"], status["planned"], status["skipped"]) == ("protecting", 10, 4, 6)
        assert "4 to protect, 6 already done" in progress.line(report.write())
    status = json.loads((tmp_path / "out" / STATUS_NAME).read_text())
    assert (status["state"], status["protected"], status["errors"], status["remaining"]) == ("done", 1, 1, 2)
    assert status["photos_per_hour"] > 0 and status["eta_s"] is not None and status["run_id"] == "r1"


@pytest.mark.integration
def test_run_from_an_input_list_gives_each_listed_object_one_row_and_a_status_file(tmp_path, ray_local):
    from helpers import encode, photo

    from danp_pipeline.job import pipeline

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(encode(photo("astronaut", (64, 48)), "JPEG"))
    (tmp_path / "in" / "not-listed.jpg").write_bytes(b"never read")
    outside = f"file://{tmp_path}/elsewhere.jpg"
    listed = [f"file://{tmp_path}/in/a.jpg", outside, f"file://{tmp_path}/in/gone.jpg", f"{tmp_path}/in/a.jpg"]
    pq.write_table(pa.table({"uri": listed}), tmp_path / "list.parquet")
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), input_list=str(tmp_path / "list.parquet"),
                      plan_partitions=2)

    first = pipeline.run(cfg)
    assert (first.total, first.ok, first.errors, first.skipped) == (3, 1, 2, 0)
    rows = {r["source_uri"]: r for r in Output.open(cfg.output_uri).read().to_pylist()}
    assert sorted(rows) == sorted(listed[:3])        # the duplicate once, the unlisted file not at all
    assert rows[outside]["error"].startswith("listed object is not under INPUT")
    assert rows[f"file://{tmp_path}/in/gone.jpg"]["error"] == "object vanished between listing and reading"
    status = json.loads((tmp_path / "out" / STATUS_NAME).read_text())
    assert (status["state"], status["listed"], status["planned"], status["protected"], status["errors"]) == \
        ("done", 3, 3, 1, 2)

    again = pipeline.run(cfg)
    assert (again.total, again.ok, again.errors, again.skipped) == (3, 0, 0, 3)
    assert len(Output.open(cfg.output_uri).read()) == 3


# -- names that are not UTF-8, symlinks --------------------------------------------------------------

LATIN1 = b"caf\xe9 d\xe9j\xe0.jpg"          # Latin-1 bytes: not UTF-8
TWIN = "caf\\xe9 d\\xe9j\\xe0.jpg"            # a UTF-8 name spelling LATIN1's escape with real backslashes


def odd_entries(root) -> None:
    """INPUT with a name that is not UTF-8, symlinks of every kind (at the top and one level down, so
    that both the per-directory and the recursive listing tasks meet them), and a file outside INPUT."""
    from helpers import encode, photo

    (root / "in" / "sub").mkdir(parents=True)
    (root / "in" / "dir").mkdir()
    (root / "in" / "a.jpg").write_bytes(encode(photo("astronaut", (64, 48)), "JPEG"))
    (root / "in" / "sub" / "b.png").write_bytes(encode(photo("coffee", (64, 48)), "PNG"))
    with open(bytes(root / "in") + b"/" + LATIN1, "wb") as fh:
        fh.write(encode(photo("chelsea", (64, 48)), "JPEG"))
    (root / "in" / TWIN).write_bytes(b"a twin that must not be mistaken for LATIN1")
    (root / "outside.jpg").write_bytes(encode(photo("camera", (64, 48)), "JPEG"))
    for link, target in [("in/link.jpg", "a.jpg"), ("in/sub/up.jpg", "../a.jpg"), ("in/out.jpg", "../outside.jpg"),
                         ("in/sub/out.jpg", str(root / "outside.jpg")), ("in/gone.jpg", "missing.jpg"),
                         ("in/dirlink", "dir")]:
        (root / link).symlink_to(target)
    os.mkfifo(root / "in" / "sub" / "pipe.jpg")


ODD_ERRORS = {"out.jpg": "symlink to a file outside INPUT", "sub/out.jpg": "symlink to a file outside INPUT",
              "gone.jpg": "dangling symlink", "dirlink": "symlink to a directory",
              "sub/pipe.jpg": "not a regular file"}
ODD_OK = ["a.jpg", "sub/b.png", "caf\\xe9 d\\xe9j\\xe0.jpg", "link.jpg", "sub/up.jpg"]
ESCAPED_TWIN = TWIN.replace("\\", "\\\\")


def test_names_that_are_not_utf8_are_escaped_reversibly_and_name_their_output_byte_for_byte(tmp_path):
    name = os.fsdecode(LATIN1)
    escaped = storage.escape_name(name)
    assert escaped == "caf\\xe9 d\\xe9j\\xe0.jpg" and escaped.encode("utf-8")
    assert storage.escape_name(TWIN) == ESCAPED_TWIN != escaped       # the escape is injective
    for text in (name, TWIN, "ünïcødé 写真.jpg", "\\\\x80\\", os.fsdecode(b"\xff\\\xfe")):
        assert storage.unescape_name(storage.escape_name(text)) == text
    assert storage.escape_name("2024/ünïcødé 写真.jpg") == "2024/ünïcødé 写真.jpg"   # UTF-8 names are unchanged
    output = Output.open(str(tmp_path / "out"))
    assert os.fsencode(output.image_path(f"x/{escaped}")) == bytes(tmp_path / "out/images/x") + b"/" + LATIN1 + b".png"
    assert Output(None, "b").image_path(escaped) == f"b/images/{escaped}.png"    # object stores: UTF-8 keys
    with pytest.raises(storage.UnsafeKeyError, match="backslash"):     # a real backslash is still refused
        output.image_path("a\\\\b.jpg")


def test_every_entry_gets_one_row_and_links_are_followed_only_to_files_inside_input(tmp_path):
    odd_entries(tmp_path)
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"))
    found = serial(cfg)
    assert sorted(found) == sorted([*ODD_OK, *ODD_ERRORS, ESCAPED_TWIN])
    errors = {r["source_key"]: r["read_error"] for r in reader.list_inputs(cfg) if r["read_error"]}
    assert sorted(errors) == sorted(ODD_ERRORS)
    for key, why in ODD_ERRORS.items():
        assert errors[key].startswith(why) and found[key][1] is None, (key, errors[key])   # no path: never read
    assert found["link.jpg"][1] == found["sub/up.jpg"][1] == os.path.realpath(tmp_path / "in" / "a.jpg")
    assert found["link.jpg"][2] == found["a.jpg"][2]                   # the target's size
    # a link swapped to point outside after the listing is refused by the reader too
    item = next(r for r in reader.list_inputs(cfg) if r["source_key"] == "link.jpg")
    (tmp_path / "in" / "link.jpg").unlink()
    (tmp_path / "in" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    read = reader.read_objects(pa.Table.from_pylist([{**item, "path": str(tmp_path / "in" / "link.jpg")}]),
                               input_uri=cfg.input_uri, storage_options={}, max_pixels=10**6).to_pylist()
    assert "outside INPUT" in read[0]["read_error"] and read[0]["data"] is None


@pytest.mark.integration
def test_a_run_over_odd_names_and_symlinks_protects_what_it_may_and_reruns_nothing(tmp_path, ray_local):
    from danp_pipeline.job import pipeline
    from danp_pipeline.manifest import verify

    odd_entries(tmp_path)
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), model="tiny-ip2p", list_fanout_depth=1)
    for depth in (0, 1):       # the recursive and the per-directory listing tasks list the same rows
        assert rows(listing.dataset(cfg.replace(list_fanout_depth=depth), {})) == serial(cfg), depth

    first = pipeline.run(cfg)
    assert (first.total, first.ok, first.errors, first.skipped) == (11, 5, 6, 0)
    found = {r["source_key"]: r for r in Output.open(cfg.output_uri).read().to_pylist()}
    assert sorted(found) == sorted([*ODD_OK, *ODD_ERRORS, ESCAPED_TWIN])
    assert "backslash" in found[ESCAPED_TWIN]["error"]         # refused as before, and not mistaken for LATIN1
    assert all(found[k]["status"] == "ok" for k in ODD_OK)
    for key, why in ODD_ERRORS.items():
        assert found[key]["error"].startswith(why) and found[key]["source_sha256"] is None, key
    odd = found["caf\\xe9 d\\xe9j\\xe0.jpg"]
    assert odd["source_uri"] == f"file://{tmp_path}/in/caf\\xe9 d\\xe9j\\xe0.jpg"
    with open(bytes(tmp_path / "in") + b"/" + LATIN1, "rb") as fh:
        assert odd["source_sha256"] == provenance.sha256_hex(fh.read())                # the exact file was read
    assert LATIN1 + b".png" in os.listdir(bytes(tmp_path / "out" / "images"))       # named byte for byte
    assert found["link.jpg"]["source_sha256"] == found["a.jpg"]["source_sha256"]
    assert verify.verify(cfg.output_uri).ok

    again = pipeline.run(cfg)
    assert (again.total, again.ok, again.errors, again.skipped) == (11, 0, 0, 11)
    assert len(Output.open(cfg.output_uri).read()) == 11
