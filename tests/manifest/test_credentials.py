"""Issue 13: C2PA content credentials on every protected output, validated by the C2PA reader and
by ``danp-protect verify``; a tampered output fails; keys never reach logs or the manifest."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import c2pa
import pytest
from helpers import archive_files, fast_config, make_test_ca, protect_files

from danp_pipeline import storage
from danp_pipeline.manifest.credentials import CredentialsError, Signer, validate
from danp_pipeline.manifest.verify import verify


def run_signed(tmp_path, files, chain, key, **changes):
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / "out"), c2pa_cert=chain, c2pa_key=key, **changes)
    return cfg, protect_files(cfg, files)


def test_signed_outputs_carry_the_three_assertions_and_verify(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    chain, key, anchors = make_test_ca(tmp_path)
    files = {k: v for k, v in archive_files().items() if k.endswith((".jpg", ".png", ".heic"))}
    cfg, rows = run_signed(tmp_path, files, chain, key, output_format="source")
    fs, _ = storage.filesystem(cfg.output_uri)
    for row in rows:
        data = fs.cat_file(row["output_uri"])
        mime = {"png": "image/png", "jpeg": "image/jpeg", "heic": "image/heic"}[row["output_format"]]
        assert validate(data, mime).ok and validate(data, mime, Path(anchors).read_text()).state == "Trusted"
        context = c2pa.Context.from_dict({"trust": {"user_anchors": Path(anchors).read_text()}})
        with c2pa.Reader(mime, io.BytesIO(data), context=context) as r:
            report = json.loads(r.json())
        manifest = report["manifests"][report["active_manifest"]]
        assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
        actions = {a["action"]: a for a in assertions["c2pa.actions.v2"]["actions"]}
        agent = actions["c2pa.edited"]["softwareAgent"]
        assert agent["name"] == "danp-pipeline" and agent["config_sha256"] == row["config_sha256"]
        assert agent["version"] == row["package_version"] and "c2pa.opened" in actions
        entries = assertions["c2pa.training-mining"]["entries"]
        assert {entries[k]["use"] for k in ("c2pa.ai_training", "c2pa.ai_inference")} == {"notAllowed"}
        (ingredient,) = manifest["ingredients"]
        assert ingredient["relationship"] == "parentOf"
        assert ingredient["instance_id"] == f"sha256:{row['source_sha256']}"
        assert "thumbnail" not in manifest and "thumbnail" not in ingredient          # no thumbnails at archive scale
        assert 2_000 < row["c2pa_bytes"] < 12_000, row["c2pa_bytes"]                 # ~4 KB, not ~559 KB
        assert report["validation_state"] == "Trusted"
    assert verify(cfg.output_uri).ok and verify(cfg.output_uri).signed == len(files)
    # key material never reaches the logs or the manifest
    secrets = Path(key).read_text().splitlines()[1:-1]       # the base64 body of the PEM key
    parts = [p for p in fs.find(f"{tmp_path}/out/manifest") if p.endswith(".parquet")]
    for secret in secrets:
        assert secret not in caplog.text and all(secret.encode() not in fs.cat_file(p) for p in parts)


def test_tampered_output_fails_verify(tmp_path):
    chain, key, _ = make_test_ca(tmp_path)
    files = {"a.png": archive_files()["arch/p3.png"]}
    cfg, rows = run_signed(tmp_path, {"a.png": files["a.png"]}, chain, key)
    path = rows[0]["output_uri"].removeprefix("file://")
    data = bytearray(Path(path).read_bytes())
    at = data.find(b"IDAT") + 20
    data[at] ^= 0x01                                                       # one bit of pixel data
    Path(path).write_bytes(bytes(data))
    report = verify(cfg.output_uri)
    assert not report.ok and report.modified == [rows[0]["output_uri"]]
    (problem,) = report.credentials
    assert "assertion.dataHash.mismatch" in problem
    assert not validate(bytes(data), "image/png").ok


def test_rejected_credentials_are_one_line_without_key_material(tmp_path):
    chain, key, _ = make_test_ca(tmp_path, mismatched_key=True)
    with pytest.raises(CredentialsError) as err:
        Signer.load(chain, key)
    text = str(err.value)
    assert "rejected" in text and chain in text and "\n" not in text and "PRIVATE" not in text
    with pytest.raises(CredentialsError, match="cannot read the C2PA key"):
        Signer.load(chain, str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(CredentialsError, match="not an unencrypted PEM private key"):
        Signer.load(chain, str(tmp_path / "junk.pem"))
    (tmp_path / "ok").mkdir()
    assert "_key" not in repr(Signer.load(*make_test_ca(tmp_path / "ok")[:2]))
