"""provenance + writer: the fixed schema, the ledger's rules, idempotent parts, superseded rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from helpers import fast_config

from danp_pipeline import storage
from danp_pipeline.manifest import provenance, writer
from danp_pipeline.manifest.output import Output

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def row(source: str, status: str = "ok", config: str = "c1", minutes: int = 0, **fields):
    return provenance.make_row(source_uri=source, source_key=source.rsplit("/", 1)[-1], status=status,
                               config_sha256=config, finished_at=T0 + timedelta(minutes=minutes),
                               error=None if status == "ok" else "boom", **fields)


@pytest.fixture
def manifest(tmp_path):
    fs, root = storage.filesystem(str(tmp_path))
    return fs, Output(fs, root).manifest_dir


def test_schema_has_every_column_the_design_lists():
    design = ("source_uri source_sha256 source_bytes width height status error output_uri output_sha256 method "
              "model_id model_revision prompts config_json config_sha256 linf_levels psnr_db loss_first loss_last "
              "seed duration_s device started_at finished_at package_version").split()
    assert set(design) <= set(provenance.COLUMNS)
    assert provenance.SCHEMA.field("prompts").type == pa.list_(pa.string())


def test_make_row_fills_every_column_and_refuses_unknown_ones():
    r = row("file:///a.jpg", prompts=["x"])
    assert set(r) == set(provenance.COLUMNS)
    assert r["package_version"] == provenance.package_version()
    with pytest.raises(ValueError, match="unknown manifest columns"):
        provenance.make_row(status="ok", password="x")
    with pytest.raises(ValueError, match="status"):
        provenance.make_row(status="done")


def test_parts_round_trip_with_the_fixed_schema(manifest):
    fs, mdir = manifest
    rows = [row("s3://b/1.jpg", prompts=["a", "b"], psnr_db=float("inf")), row("s3://b/2.jpg", "error")]
    path = writer.write_part(fs, mdir, rows)
    table = provenance.read_manifest(fs, mdir)
    assert table.schema == provenance.SCHEMA
    assert table.num_rows == 2 and table["prompts"].to_pylist()[0] == ["a", "b"]
    assert provenance.read_manifest(fs, mdir, with_part=True)["part"].to_pylist() == [path, path]
    assert writer.write_part(fs, mdir, []) is None


def test_part_names_are_deterministic_so_a_retried_batch_overwrites_itself(manifest):
    fs, mdir = manifest
    a, b = row("s3://b/1.jpg"), row("s3://b/2.jpg")
    assert writer.part_name([a, b]) == writer.part_name([b, a])
    assert writer.part_name([a]) != writer.part_name([a, b])
    assert writer.part_name([a]) != writer.part_name([row("s3://b/1.jpg", config="c2")])
    writer.write_part(fs, mdir, [a, b])
    writer.write_part(fs, mdir, [b, a])
    assert provenance.read_manifest(fs, mdir).num_rows == 2


def test_temp_files_are_not_parts(manifest):
    fs, mdir = manifest
    writer.write_part(fs, mdir, [row("s3://b/1.jpg")])
    fs.pipe_file(f"{mdir}/.tmp-half-written", b"garbage")
    fs.pipe_file(f"{mdir}/_SUCCESS", b"")
    assert len(provenance.list_parts(fs, mdir)) == 1
    assert provenance.read_manifest(fs, "manifest-missing").num_rows == 0


def test_winners_prefer_ok_then_newest():
    table = provenance.to_table([
        row("s3://b/1.jpg", "error", minutes=5), row("s3://b/1.jpg", "ok", minutes=1),
        row("s3://b/2.jpg", "error", minutes=1), row("s3://b/2.jpg", "error", minutes=3),
        row("s3://b/2.jpg", "ok", config="c2"),
    ])
    won = {(r["source_uri"], r["config_sha256"]): r for r in provenance.winners(table).to_pylist()}
    assert len(won) == 3
    assert won[("s3://b/1.jpg", "c1")]["status"] == "ok"
    assert won[("s3://b/2.jpg", "c1")]["finished_at"] == T0 + timedelta(minutes=3)


def test_a_rerun_skips_ok_and_error_rows_unless_retrying_and_ignores_other_configs():
    from danp_pipeline.manifest import ledger

    index = provenance.to_table([row("s3://b/ok.jpg"), row("s3://b/err.jpg", "error"),
                                 row("s3://b/other.jpg", config="c2")])
    listed = [{"source_uri": f"s3://b/{name}.jpg", "size": None} for name in ("ok", "err", "other", "new")]

    def todo(config, **kw):
        return [(i["source_uri"].rsplit("/", 1)[-1], i["reason"]) for i in ledger.decide(listed, index, config, **kw)]

    assert todo("c1") == [("other.jpg", "new"), ("new.jpg", "new")]
    assert todo("c1", retry_errors=True) == [("err.jpg", "retry"), ("other.jpg", "new"), ("new.jpg", "new")]
    assert len(todo("c3")) == 4


def remove_superseded(root) -> int:
    """The run's clean-up of superseded rows (job/planning.py, in Ray tasks) on the manifest under ``root``."""
    from danp_pipeline.job import planning
    from danp_pipeline.job.identity import Run

    cfg = fast_config("in", str(root), plan_partitions=2)
    return planning.remove_superseded(planning.plan(None, Run(cfg, "r", "{}", "c"), prompts=None), cfg)


@pytest.mark.integration
def test_remove_superseded_leaves_exactly_one_row_per_identity(manifest, tmp_path, ray_local):
    fs, mdir = manifest
    old = writer.write_part(fs, mdir, [row("s3://b/1.jpg", "error", minutes=0), row("s3://b/2.jpg")])
    lone = writer.write_part(fs, mdir, [row("s3://b/3.jpg", "error", minutes=0)])
    writer.write_part(fs, mdir, [row("s3://b/1.jpg", "ok", minutes=2), row("s3://b/3.jpg", "error", minutes=2)])
    assert remove_superseded(tmp_path) == 2
    table = provenance.read_manifest(fs, mdir)
    assert sorted(table["source_uri"].to_pylist()) == ["s3://b/1.jpg", "s3://b/2.jpg", "s3://b/3.jpg"]
    assert dict(zip(table["source_uri"].to_pylist(), table["status"].to_pylist()))["s3://b/1.jpg"] == "ok"
    assert fs.exists(old) and not fs.exists(lone)  # rewritten without the loser / deleted when empty
    assert remove_superseded(tmp_path) == 0


@pytest.mark.integration
def test_a_superseded_rows_image_goes_unless_a_current_row_lists_it(manifest, tmp_path, ray_local):
    fs, mdir = manifest
    images = {name: tmp_path / "images" / f"{name}.png" for name in ("changed-bad", "changed-ok")}
    for path in images.values():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"png")
    uri = {name: storage.to_uri(fs, str(path)) for name, path in images.items()}
    writer.write_part(fs, mdir, [row("s3://b/bad.jpg", minutes=0, source_sha256="a", output_uri=uri["changed-bad"]),
                                 row("s3://b/ok.jpg", minutes=0, source_sha256="a", output_uri=uri["changed-ok"])])
    # New bytes of both photos: one fails (error row, no image), one is protected again to the same file.
    writer.write_part(fs, mdir, [row("s3://b/bad.jpg", "error", minutes=5, source_sha256="b"),
                                 row("s3://b/ok.jpg", minutes=5, source_sha256="b", output_uri=uri["changed-ok"])])
    assert remove_superseded(tmp_path) == 2
    assert not images["changed-bad"].exists()     # the old photo's protection is not left unlisted
    assert images["changed-ok"].exists()          # overwritten by the new protection, still listed


def test_compact_merges_small_parts_without_changing_what_the_ledger_sees(manifest):
    fs, mdir = manifest
    for i in range(40):   # one part per photo, as batch_size=1 commits them; two configs
        writer.write_part(fs, mdir, [row(f"s3://b/{i:02d}.jpg", "ok" if i % 5 else "error", config=f"c{i % 2}",
                                         minutes=i, source_sha256=f"sha{i}")])
    writer.write_part(fs, mdir, [row("s3://b/00.jpg", "ok", config="c0", minutes=99, source_sha256="new")])  # changed
    before = provenance.read_manifest(fs, mdir)
    assert len(provenance.list_parts(fs, mdir)) == 41

    assert writer.compact(fs, mdir, rows_per_part=16, min_parts=50) == (0, 0)     # too few small parts
    assert writer.compact(fs, mdir, rows_per_part=16, min_parts=8) == (41, 3)
    parts = provenance.list_parts(fs, mdir)
    assert sorted(provenance.read_part(fs, p).num_rows for p in parts) == [9, 16, 16]
    after = provenance.read_manifest(fs, mdir)
    key = ["source_uri", "config_sha256", "finished_at"]
    assert after.sort_by([(k, "ascending") for k in key]).equals(before.sort_by([(k, "ascending") for k in key]))
    assert provenance.winners(after).sort_by("source_uri").equals(provenance.winners(before).sort_by("source_uri"))
    assert writer.compact(fs, mdir, rows_per_part=16, min_parts=2) == (0, 0)      # one small part left: nothing to do
    with pytest.raises(ValueError, match="rows_per_part must be >= 1"):
        writer.compact(fs, mdir, rows_per_part=0)


def test_compact_command(manifest, tmp_path):
    from danp_pipeline import cli

    fs, mdir = manifest
    for i in range(3):
        writer.write_part(fs, mdir, [row(f"s3://b/{i}.jpg")])
    assert cli.entrypoint(["compact", str(tmp_path), "--storage-options", "[1]"]) == 2   # refused, nothing touched
    assert len(provenance.list_parts(fs, mdir)) == 3
    assert cli.entrypoint(["compact", str(tmp_path)]) == 0
    assert len(provenance.list_parts(fs, mdir)) == 1 and provenance.read_manifest(fs, mdir).num_rows == 3


def test_rows_and_configurations_come_from_one_pass_over_the_parts(manifest, monkeypatch):
    """The report needs the rows and each configuration's JSON: every part is fetched once for both, and
    the JSON text is reduced to one entry per configuration, not returned per row."""
    fs, manifest_dir = manifest
    writer.write_part(fs, manifest_dir, [row("s3://b/a.jpg", config="c1", config_json='{"a": 1}'),
                                         row("s3://b/b.jpg", config="c2", config_json='{"b": 2}')])
    writer.write_part(fs, manifest_dir, [row("s3://b/c.jpg", config="c1", config_json='{"a": 1}')])
    fetched, cat_file = [], fs.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda path, *a, **kw: fetched.append(path) or cat_file(path, *a, **kw))
    configs: dict[str, str] = {}
    table = provenance.read_manifest(fs, manifest_dir, ["source_uri", "status"], configs=configs)
    assert table.column_names == ["source_uri", "status"] and table.num_rows == 3
    assert configs == {"c1": '{"a": 1}', "c2": '{"b": 2}'}
    assert len(fetched) == len(set(fetched)) == 2
