"""The decode, protect and write stages called directly, without Ray: one row per input, bad photos become
error rows; the Protector does the editor's work alone."""

from __future__ import annotations

import pyarrow as pa
import pytest
from helpers import FAST_ARGS, FAST_ATTACK, bad_inputs, check_linf, encode, fast_config, odd_photos, photo, protect_rows

from danp_pipeline import storage
from danp_pipeline.config import DEFAULT_PROMPTS, config_json, config_sha256
from danp_pipeline.job import faults, outputs, reader
from danp_pipeline.job.faults import CRASH_ON_KEY_ENV
from danp_pipeline.job.identity import Run
from danp_pipeline.job.worker import Protector
from danp_pipeline.manifest import provenance
from danp_pipeline.manifest.output import ATTEMPTS_DIR
from danp_pipeline.protect.immunizer import Immunizer


def read_batch(cfg, files: dict[str, bytes], tmp_path, prompts=None) -> pa.Table:
    """Write files under INPUT and run the real listing and read stage on them."""
    for key, data in files.items():
        path = tmp_path / "in" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    items = list(reader.list_inputs(cfg, prompts))
    return reader.read_objects(pa.Table.from_pylist(items), input_uri=cfg.input_uri,
                               storage_options=cfg.storage_options, max_pixels=cfg.max_pixels)


@pytest.fixture
def cfg(tmp_path):
    return fast_config(str(tmp_path / "in"), str(tmp_path / "out"))


def test_one_row_per_input_in_order_with_readable_reasons(cfg, tmp_path):
    bad = bad_inputs()
    files = {"good.jpg": encode(photo("astronaut", (80, 64)), "JPEG"), **{k: v for k, (v, _) in bad.items()}}
    batch = read_batch(cfg, files, tmp_path)
    out = protect_rows(Run.start(cfg, run_id="r1"), batch)
    assert out.schema == provenance.SCHEMA
    rows = {r["source_key"]: r for r in out.to_pylist()}
    assert out["source_key"].to_pylist() == batch["source_key"].to_pylist()
    assert rows["good.jpg"]["status"] == "ok"
    for key, (_, reason) in bad.items():
        assert rows[key]["status"] == "error" and reason in rows[key]["error"], (key, rows[key]["error"])
        assert rows[key]["output_uri"] is None
    good = rows["good.jpg"]
    fs, _ = storage.filesystem(cfg.output_uri)
    data = fs.cat_file(good["output_uri"])
    assert good["output_uri"] == f"file://{tmp_path}/out/images/good.jpg.png"
    assert good["output_sha256"] == provenance.sha256_hex(data)
    assert good["source_sha256"] == provenance.sha256_hex(files["good.jpg"])
    assert check_linf(files["good.jpg"], data, FAST_ATTACK.eps) == good["linf_levels"]
    assert (good["width"], good["height"], good["seed"], good["run_id"]) == (80, 64, FAST_ATTACK.seed, "r1")
    assert good["config_sha256"] == config_sha256(config_json(FAST_ATTACK, "tiny-ip2p", None))
    assert good["prompts"] == list(DEFAULT_PROMPTS) and good["device"] == "cpu"
    assert good["started_at"] <= good["finished_at"] and good["duration_s"] > 0
    committed = provenance.read_manifest(fs, f"{tmp_path}/out/manifest")
    assert committed.num_rows == len(files)  # the batch is committed as one part


def test_odd_but_valid_images_are_all_protected(cfg, tmp_path):
    files = odd_photos()
    out = protect_rows(cfg, read_batch(cfg, files, tmp_path)).to_pylist()
    assert [r["status"] for r in out] == ["ok"] * len(files), [r["error"] for r in out]
    fs, _ = storage.filesystem(cfg.output_uri)
    for r in out:
        check_linf(files[r["source_key"]], fs.cat_file(r["output_uri"]), FAST_ATTACK.eps)
    notes = {r["source_key"]: r["notes"] for r in out}
    assert "exif orientation 6 applied" in notes["odd/exif-rotated.jpg"]
    assert len({r["output_uri"] for r in out}) == len(out)


def test_sidecar_prompts_win_and_others_fall_back(tmp_path):
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), prompts=("make it snow",))
    files = {"a.jpg": encode(photo("astronaut", (64, 64)), "JPEG"),
             "b.jpg": encode(photo("coffee", (64, 64)), "JPEG")}
    out = protect_rows(cfg, read_batch(cfg, files, tmp_path, prompts={"a.jpg": ("add a hat", "make her smile")}))
    assert out["prompts"].to_pylist() == [["add a hat", "make her smile"], ["make it snow"]]


def test_unsafe_keys_and_read_errors_never_reach_the_disk(cfg, tmp_path):
    record = {"source_uri": "s3://b/in/x/../../escape.jpg", "path": "b/in/x/../../escape.jpg",
              "source_key": "x/../../escape.jpg", "size": 3, "prompts": [],
              "data": encode(photo("astronaut", (64, 64)), "JPEG"), "read_error": None}
    vanished = {**record, "source_uri": "s3://b/in/v.jpg", "source_key": "v.jpg", "data": None,
                "read_error": "object vanished between listing and reading"}
    out = protect_rows(cfg, [record, vanished]).to_pylist()
    assert out[0]["status"] == "error" and "unsafe key" in out[0]["error"]
    assert out[1]["error"] == "object vanished between listing and reading"
    assert not (tmp_path / "escape.jpg.png").exists() and not (tmp_path / "out" / "images").exists()


def test_a_failing_batch_is_retried_photo_by_photo(cfg, tmp_path, monkeypatch):
    files = {"a.jpg": encode(photo("astronaut", (64, 64)), "JPEG"),
             "poison.jpg": encode(photo("coffee", (64, 64)), "JPEG")}
    run = Run.start(cfg)
    batch = reader.decode_objects(read_batch(cfg, files, tmp_path), run=run)
    protector = Protector(run)
    real = Immunizer.protect

    def flaky(self, photos, prompts, seeds=None):
        if any(p.rgb.mean() == poison_mean for p in photos):
            raise RuntimeError("CUDA error: simulated")
        return real(self, photos, prompts, seeds)

    from danp_pipeline.imaging.codec import decode_image

    poison_mean = decode_image(files["poison.jpg"]).rgb.mean()
    monkeypatch.setattr(Immunizer, "protect", flaky)
    out = {r["source_key"]: r for r in outputs.write_outputs(protector(batch), run=run).to_pylist()}
    assert out["a.jpg"]["status"] == "ok"
    assert out["poison.jpg"]["status"] == "error"
    assert out["poison.jpg"]["error"] == "protection failed: RuntimeError: CUDA error: simulated"



def test_a_batch_with_nothing_left_to_protect_never_reaches_the_editor(cfg, monkeypatch, caplog):
    vanished = {"source_uri": "s3://b/in/v.jpg", "path": "b/in/v.jpg", "source_key": "v.jpg", "size": 3,
                "prompts": [], "data": None, "read_error": "object vanished between listing and reading"}
    calls = []
    monkeypatch.setattr(Immunizer, "protect", lambda self, photos, prompts, seeds=None: calls.append(photos) or [])
    out = protect_rows(cfg, [vanished, {**vanished, "source_uri": "s3://b/in/w.jpg", "source_key": "w.jpg"}])
    assert out["status"].to_pylist() == ["error", "error"]
    assert calls == [] and not [r for r in caplog.records if "retrying photo by photo" in r.getMessage()]

class Died(BaseException):
    """Stands in for the process exit of a native crash: nothing after it runs, no except catches it."""


def test_a_photo_that_keeps_killing_its_worker_becomes_an_error_row(tmp_path, monkeypatch):
    """Ray restarts a dead actor and retries its batch without limit; the attempt records bound that.
    Each call below is what Ray's retry does after the actor process died."""
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), batch_size=2, max_photo_attempts=2)
    files = {"good.jpg": encode(photo("astronaut", (64, 64)), "JPEG"),
             "poison.jpg": encode(photo("coffee", (64, 64)), "JPEG")}
    run = Run.start(cfg, run_id="r1")
    batch = reader.decode_objects(read_batch(cfg, files, tmp_path), run=run)
    monkeypatch.setenv(CRASH_ON_KEY_ENV, "poison.jpg")
    monkeypatch.setattr(faults.os, "_exit", lambda code: (_ for _ in ()).throw(Died(code)))
    protected = []
    real = Immunizer.protect

    def protect(self, photos, prompts, seeds=None):
        protected.append(len(photos))
        return real(self, photos, prompts, seeds)

    monkeypatch.setattr(Immunizer, "protect", protect)
    protector = Protector(run)
    attempts = tmp_path / "out" / ATTEMPTS_DIR
    with pytest.raises(Died):  # 1st try: the whole batch, dies before protecting anything
        protector(batch)
    assert len(list(attempts.iterdir())) == 2 and protected == []
    with pytest.raises(Died):  # 2nd: photo by photo; the good photo is protected, the poison dies again
        protector(batch)
    assert protected == [1] and len(list(attempts.iterdir())) == 1
    rows = outputs.write_outputs(protector(batch), run=run).to_pylist()      # 3rd: the poison is given up
    out = {r["source_key"]: r for r in rows}
    assert out["good.jpg"]["status"] == "ok", out["good.jpg"]["error"]
    assert out["poison.jpg"]["status"] == "error" and out["poison.jpg"]["output_uri"] is None
    assert out["poison.jpg"]["error"].startswith("the worker process died 2 times while protecting this photo")
    assert "max_photo_attempts=2" in out["poison.jpg"]["error"]
    assert protected == [1, 1] and not list(attempts.iterdir())  # every attempt ended: no record is left


def test_an_attempt_that_ends_leaves_no_attempt_record(cfg, tmp_path):
    files = {"a.jpg": encode(photo("astronaut", (64, 64)), "JPEG"), "bad.jpg": b"not an image"}
    out = protect_rows(cfg, read_batch(cfg, files, tmp_path)).to_pylist()
    assert [r["status"] for r in out] == ["ok", "error"]
    assert not list((tmp_path / "out" / ATTEMPTS_DIR).iterdir())


def test_write_failure_is_an_error_row(cfg, tmp_path):
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "images" / "blocked").write_bytes(b"a file where a directory must go")
    files = {"blocked/a.jpg": encode(photo("astronaut", (64, 64)), "JPEG")}
    out = protect_rows(cfg, read_batch(cfg, files, tmp_path)).to_pylist()
    assert out[0]["status"] == "error" and out[0]["error"].startswith("cannot write output")


def test_same_photo_same_config_same_bytes(cfg, tmp_path):
    files = {"a.jpg": encode(photo("astronaut", (64, 64)), "JPEG")}
    batch = read_batch(cfg, files, tmp_path)
    first = protect_rows(cfg, batch)["output_sha256"][0].as_py()
    second = protect_rows(cfg, batch)["output_sha256"][0].as_py()
    assert first == second


@pytest.mark.parametrize("broken", ["every", "first"])
def test_a_protection_that_did_not_happen_is_never_ok(cfg, tmp_path, monkeypatch, broken):
    """Non-finite gradients (a half-precision overflow on a GPU) skip PGD steps. Every step skipped: the
    photo would be written unchanged, so it is an error row and nothing is written. One step skipped
    of two: still a protection, ``ok``, and the row counts the skipped step."""
    import torch

    from danp_pipeline.protect import pgd

    real, calls = pgd.Balancer.combine, []

    def combine(self, *args, **kwargs):
        g = real(self, *args, **kwargs)
        calls.append(1)
        return torch.full_like(g, float("nan")) if broken == "every" or len(calls) == 1 else g

    monkeypatch.setattr(pgd.Balancer, "combine", combine)
    files = {"a.jpg": encode(photo("astronaut", (64, 64)), "JPEG")}
    row = protect_rows(cfg, read_batch(cfg, files, tmp_path)).to_pylist()[0]
    if broken == "every":
        assert row["status"] == "error" and row["output_uri"] is None
        assert row["error"].startswith(f"no finite gradient in {FAST_ATTACK.steps} iteration(s)")
        assert not (tmp_path / "out" / "images").exists() or not list((tmp_path / "out" / "images").rglob("*.*"))
    else:
        assert row["status"] == "ok" and row["steps_skipped"] == 1 and row["linf_levels"] >= 1


def test_an_unchanged_photo_is_never_ok(cfg, tmp_path, monkeypatch):
    """Whatever the reason, an output equal to its source (L∞ 0) is not a protection."""
    from danp_pipeline.protect import immunizer

    monkeypatch.setattr(immunizer, "apply_delta", lambda img, delta, eps: img.rgb.copy())
    files = {"a.jpg": encode(photo("astronaut", (64, 64)), "JPEG")}
    row = protect_rows(cfg, read_batch(cfg, files, tmp_path)).to_pylist()[0]
    assert row["status"] == "error" and "unchanged (L∞ 0 levels)" in row["error"]


def test_a_stopped_runs_attempts_are_taken_back_not_counted(cfg, tmp_path):
    """A stop kills the actors with photos in flight: their records go back to the deaths counted before
    (job/attempts.py); another run's records are not touched."""
    from danp_pipeline.job.attempts import AttemptRecords, forgive_stopped
    from danp_pipeline.manifest.output import Output

    output = Output.open(cfg.output_uri)
    mine, theirs = AttemptRecords(output, "c" * 64, "stopped", {}), AttemptRecords(output, "c" * 64, "other", {})
    mine.record("s3://in/first-try.jpg", "first-try.jpg", 0, "t")     # in flight for the first time
    mine.record("s3://in/crashed-once.jpg", "crashed-once.jpg", 1, "t")   # a real death before this attempt
    theirs.record("s3://in/crashed.jpg", "crashed.jpg", 0, "t")       # another run's process died
    assert forgive_stopped(output, "stopped") == 2
    assert mine.died("s3://in/first-try.jpg") == 0 and not output.fs.exists(mine.path("s3://in/first-try.jpg"))
    assert mine.died("s3://in/crashed-once.jpg") == 1 and theirs.died("s3://in/crashed.jpg") == 1


def test_an_ensemble_is_protected_against_recorded_and_is_its_own_configuration(tmp_path):
    """Several --model: one actor holds every editor, rows name them all, and the set is the configuration."""
    from danp_pipeline import cli

    args = cli.build_parser().parse_args(["run", str(tmp_path / "in"), str(tmp_path / "out"), "--model", "tiny-ip2p",
                                          "--model", "tiny-sd", "--model-weights", "3,1"])
    parsed = cli.pipeline_config(args)
    assert (parsed.editors, parsed.editor_weights) == (("tiny-ip2p", "tiny-sd"), (3.0, 1.0))
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), ensemble=("tiny-sd",), editor_weights=(3, 1))
    rows = protect_rows(cfg, read_batch(cfg, {"a.jpg": encode(photo("astronaut", (72, 48)), "JPEG")}, tmp_path))
    (row,) = rows.to_pylist()
    assert row["status"] == "ok", row["error"]
    assert 0 < row["linf_levels"] <= FAST_ATTACK.linf_levels_bound
    assert row["model_id"] == "tiny-ip2p+tiny-sd" and row["model_revision"].count("+") == 1
    run, single = Run.start(cfg), Run.start(cfg.replace(ensemble=(), editor_weights=()))
    assert '"ensemble":{"models":["tiny-sd"],"weights":[0.75,0.25]}' in run.config_json
    assert run.config_sha256 != single.config_sha256 and "ensemble" not in single.config_json
    assert single.config_json == config_json(cfg.attack, "tiny-ip2p", None)   # one editor: the hash as before



def test_overlapping_calls_protect_one_batch_at_a_time_and_record_only_it(cfg, tmp_path, monkeypatch):
    """An actor runs two calls at once (config.ACTOR_CALLS): while one batch is on the editor the other may
    convert and screen, but never protect, and only the batch on the editor has attempt records, so a
    process that dies there counts no death for the batch that was waiting."""
    import threading
    import time

    files = {f"p{i}.jpg": encode(photo("astronaut", (48, 40)), "JPEG") for i in range(4)}
    batch = reader.decode_objects(read_batch(cfg, files, tmp_path), run=Run.start(cfg, run_id="r1"))
    protector = Protector(Run.start(cfg, run_id="r1"))
    fs, _ = storage.filesystem(cfg.output_uri)
    inside, seen, original = [], [], Immunizer.protect

    def protect(self, photos, prompts, seeds=None):
        inside.append(len(photos))
        seen.append((len(inside), len(fs.ls(f"{tmp_path}/out/{ATTEMPTS_DIR}"))))
        time.sleep(0.3)          # the other call arrives meanwhile
        inside.pop()
        return original(self, photos, prompts, seeds)

    monkeypatch.setattr(Immunizer, "protect", protect)
    halves = [batch.slice(0, 2), batch.slice(2, 2)]
    out = [None, None]
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, protector(halves[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [(1, 2), (1, 2)]          # one batch on the editor at a time, and its 2 records only
    assert [r["error"] for part in out for r in part.to_pylist()] == [None] * 4


@pytest.mark.parametrize("kind", ["sdxl", "sdxl-ip2p", "sd-inpaint"])
def test_sdxl_and_inpainting_editors_saved_to_disk_are_protected_against_like_ip2p(tmp_path, kind):
    """An SDXL or inpainting editor in a local diffusers directory: the run's pre-flight accepts it, the Protector
    loads it through the real loading path, and its rows and outputs are those of an InstructPix2Pix run."""
    from danp_pipeline import cli
    from danp_pipeline.job import preflight
    from danp_pipeline.protect.models import load_editor

    model = str(tmp_path / kind)
    load_editor(f"tiny-{kind}").save_pretrained(model)
    argv = ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--model", model, *FAST_ARGS[2:]]
    cfg = cli.pipeline_config(cli.build_parser().parse_args(argv))
    files = {"a.jpg": encode(photo("astronaut", (72, 48)), "JPEG")}
    batch = read_batch(cfg, files, tmp_path)
    preflight.check(cfg)
    (row,) = protect_rows(cfg, batch).to_pylist()
    assert row["status"] == "ok", row["error"]
    data = storage.filesystem(cfg.output_uri)[0].cat_file(row["output_uri"])
    assert row["output_uri"] == f"file://{tmp_path}/out/images/a.jpg.png"
    assert row["output_sha256"] == provenance.sha256_hex(data)
    assert 1 <= check_linf(files["a.jpg"], data, FAST_ATTACK.eps) == row["linf_levels"] <= FAST_ATTACK.linf_levels_bound
    assert row["model_id"] == model and row["model_revision"].startswith("local-")
    assert row["config_sha256"] == config_sha256(config_json(FAST_ATTACK, model, None))
    assert row["psnr_db"] > 35 and row["loss_first"] == row["loss_first"] and row["loss_last"] == row["loss_last"]


def test_an_ensemble_of_editors_of_different_kinds_is_protected_against(tmp_path):
    """InstructPix2Pix, SDXL img2img (saved to disk) and SD inpainting: one actor, one δ, one row naming all."""
    from danp_pipeline.protect.models import load_editor

    sdxl = str(tmp_path / "sdxl")
    load_editor("tiny-sdxl").save_pretrained(sdxl)
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), ensemble=(sdxl, "tiny-sd-inpaint"))
    rows = protect_rows(cfg, read_batch(cfg, {"a.jpg": encode(photo("astronaut", (72, 48)), "JPEG")}, tmp_path))
    (row,) = rows.to_pylist()
    assert row["status"] == "ok", row["error"]
    assert 1 <= row["linf_levels"] <= FAST_ATTACK.linf_levels_bound
    assert row["model_id"] == f"tiny-ip2p+{sdxl}+tiny-sd-inpaint" and row["model_revision"].count("+") == 2
