"""Issue 13: clear errors before any Ray work starts — one line naming the value, exit status 2,
no traceback (``-v`` shows it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import archive_files, make_test_ca

from danp_pipeline import cli
from danp_pipeline.job import preflight


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(archive_files()["arch/p3.png"])
    return folder


def run_cli(caplog, *argv) -> tuple[int, list[str]]:
    caplog.clear()
    rc = cli.entrypoint(list(argv))
    return rc, [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("case", ["missing", "empty", "prompts", "model-dir", "model-name", "model-bin", "model-hub",
                                  "model-ensemble", "model-weights", "credentials", "output-proc", "output-under-file"])
def test_bad_values_exit_2_with_one_line_naming_them(case, tmp_path, photos, caplog, monkeypatch):
    monkeypatch.setattr("danp_pipeline.job.pipeline.execute", lambda run: pytest.fail("the job must not start"))
    out = str(tmp_path / "out")
    args, named = [str(photos), out], None
    if not case.startswith("model"):
        args += ["--model", "tiny-ip2p"]
    if case == "missing":
        args[0] = named = str(tmp_path / "no" / "such" / "dir")
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args[0] = named = str(tmp_path / "empty")
    elif case == "prompts":
        named = str(tmp_path / "nope.json")
        args += ["--prompts-file", named]
    elif case == "model-dir":
        named = str(tmp_path / "no-model")
        args += ["--model", named]
    elif case == "model-name":
        named = "not a model!"
        args += ["--model", named]
    elif case == "model-hub":   # not cached, and the Hub unreachable (offline here; HF_HUB_OFFLINE says so)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        named = "nobody/no-such-editor-xyz"
        args += ["--model", named]
    elif case == "model-ensemble":     # every editor of an ensemble is checked before any work
        named = str(tmp_path / "no-second-model")
        args += ["--model", "tiny-ip2p", "--model", named]
    elif case == "model-weights":
        named = "editor_weights must be 2 positive finite numbers"
        args += ["--model", "tiny-ip2p", "--model", "tiny-sd", "--model-weights", "1,0"]
    elif case == "model-bin":
        model = tmp_path / "pickled"
        (model / "unet").mkdir(parents=True)
        (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
        (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
        named = str(model)
        args += ["--model", named]
    elif case == "output-proc":         # found in the pre-flight, not after minutes of protection
        args[1] = named = "/proc/danp-out"
    elif case == "output-under-file":
        (tmp_path / "file").write_text("a regular file")
        args[1] = named = str(tmp_path / "file" / "out")
    else:
        chain, key, _ = make_test_ca(tmp_path, mismatched_key=True)
        named = chain
        args += ["--c2pa-cert", chain, "--c2pa-key", key]
    rc, errors = run_cli(caplog, "run", *args)
    assert rc == 2 and len(errors) == 1 and "\n" not in errors[0], errors
    assert named in errors[0], errors
    assert not any(r.exc_info for r in caplog.records)                 # no traceback without -v


def test_missing_s3_credentials_are_one_line(monkeypatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    cfg = cli.pipeline_config(cli.build_parser().parse_args(["run", "s3://danp-no-bucket/photos", "/tmp/x",
                                                             "--storage-options", '{"endpoint_url": "http://127.0.0.1:9"}']))
    with pytest.raises(ValueError) as err:
        preflight.check_input(cfg)
    text = str(err.value)
    assert text.startswith("cannot list input 's3://danp-no-bucket/photos'") and "\n" not in text


def test_good_values_pass_and_builtin_models_need_no_files(photos, monkeypatch, tmp_path):
    for name in ("tiny-ip2p", "tiny-sd"):
        preflight.check_model(name)
    monkeypatch.setattr(preflight.C, "MICRO_EDITORS_DIR", tmp_path)       # a micro-editor is checked installed
    with pytest.raises(ValueError, match="micro-editor 'micro-ip2p' is not installed"):
        preflight.check_model("micro-ip2p")
    (tmp_path / "micro-ip2p").mkdir()
    (tmp_path / "micro-ip2p" / "model_index.json").write_text("{}")
    preflight.check_model("micro-ip2p")
    argv = ["run", str(photos), str(tmp_path / "out"), "--model", "tiny-ip2p"]
    cfg = cli.pipeline_config(cli.build_parser().parse_args(argv))
    preflight.check(cfg)


def test_command_line_shows_one_line_and_traceback_only_with_v(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, "-m", "danp_pipeline.cli", "run", str(tmp_path / "no-such-dir"), str(tmp_path / "out")]
    code = "import sys; from danp_pipeline.cli import entrypoint; sys.exit(entrypoint(sys.argv[1:]))"
    quiet = subprocess.run([sys.executable, "-c", code, *argv[3:]], capture_output=True, text=True, env=env,
                           timeout=120, check=False)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and str(tmp_path / "no-such-dir") in lines[0], lines
    loud = subprocess.run([sys.executable, "-c", code, "-v", *argv[3:]], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert loud.returncode == 2 and "Traceback" in loud.stderr


def test_output_options_reach_the_config_and_its_hash(monkeypatch):
    from danp_pipeline.config import (
        C2PA_CERT_ENV,
        C2PA_KEY_ENV,
        config_json,
        output_settings,
    )

    monkeypatch.delenv(C2PA_CERT_ENV, raising=False)
    monkeypatch.delenv(C2PA_KEY_ENV, raising=False)
    parse = cli.build_parser().parse_args
    default = cli.pipeline_config(parse(["run", "in", "out"]))
    assert (default.output_format, default.quality, default.c2pa_cert) == ("png", 92, None)
    assert output_settings(default) is None     # manifests written before output options keep their hash
    assert output_settings(cli.pipeline_config(parse(["run", "in", "out", "--quality", "50"]))) is None  # lossless
    cfg = cli.pipeline_config(parse(["run", "in", "out", "--output-format", "jpeg", "--quality", "80", "--strip-gps"]))
    assert (cfg.output_format, cfg.quality, cfg.strip_gps, cfg.strip_metadata) == ("jpeg", 80, True, False)
    assert config_json(cfg.attack, cfg.model, None, output_settings(cfg)) != config_json(cfg.attack, cfg.model, None)
    with pytest.raises(ValueError, match="c2pa_cert and c2pa_key go together"):
        cli.pipeline_config(parse(["run", "in", "out", "--c2pa-key", "/secrets/key.pem"]))
    monkeypatch.setenv(C2PA_CERT_ENV, "/secrets/chain.pem")
    monkeypatch.setenv(C2PA_KEY_ENV, "/secrets/key.pem")
    signed = cli.pipeline_config(parse(["run", "in", "out"]))            # credentials from mounted secrets
    assert (signed.c2pa_cert, signed.c2pa_key) == ("/secrets/chain.pem", "/secrets/key.pem")
    assert "key.pem" not in config_json(signed.attack, signed.model, None, output_settings(signed))


def test_run_without_model_protects_against_instructpix2pix_or_nothing(photos, tmp_path, caplog, monkeypatch):
    """The default editor is a real one: offline and not cached, the run is refused before any work,
    in one line naming it; a test editor is used only when named."""
    monkeypatch.setattr("danp_pipeline.job.pipeline.execute", lambda run: pytest.fail("the job must not start"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))      # an empty cache
    for command in ("run", "ingest"):
        rc, errors = run_cli(caplog, command, str(photos), str(tmp_path / "out"))
        assert rc == 2 and len(errors) == 1 and "timbrooks/instruct-pix2pix" in errors[0], errors
    parser = cli.command_parser("run")
    assert cli.pipeline_config(parser.parse_args(["in", "out"])).editors == ("timbrooks/instruct-pix2pix",)
    assert "default timbrooks/instruct-pix2pix" in " ".join(parser.format_help().split())


def test_output_probe_leaves_nothing_behind(photos, tmp_path):
    cfg = cli.pipeline_config(cli.build_parser().parse_args(["run", str(photos), str(tmp_path / "new" / "out"),
                                                             "--model", "tiny-ip2p"]))
    preflight.check_output(cfg)
    assert list((tmp_path / "new" / "out").iterdir()) == []          # created, probed, emptied



def test_a_failed_run_is_one_line_and_exit_1_and_error_rows_exit_3(photos, tmp_path, caplog, monkeypatch):
    """A full disk (or any failure after the pre-flight) ends in one line naming the cause, not a
    traceback; a run that finishes with error rows exits 3 (0 when every photo is ok or skipped)."""
    import errno

    from danp_pipeline.job import pipeline

    def full_disk(run):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "manifest" / "part-1.parquet"))

    monkeypatch.setattr(pipeline, "execute", full_disk)
    rc, errors = run_cli(caplog, "run", str(photos), str(tmp_path / "out"), "--model", "tiny-ip2p")
    assert rc == 1 and len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("run failed: OSError:") and "No space left on device" in errors[0], errors
    assert not any(r.exc_info for r in caplog.records)

    def summary(errors):
        return lambda run: pipeline.RunSummary(ok=1, errors=errors, skipped=0, total=1 + errors, seconds=1.0,
                                               photos_per_hour=3600.0, output_uri="o", manifest_uri="m", run_id="r")

    for errors, expected in ((0, 0), (2, 3)):
        monkeypatch.setattr(pipeline, "execute", summary(errors))
        assert run_cli(caplog, "run", str(photos), str(tmp_path / "out"), "--model", "tiny-ip2p")[0] == expected
