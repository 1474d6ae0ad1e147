"""storage: URIs and options, listing, safe keys, atomic writes — locally and on a moto S3 server."""

from __future__ import annotations

import hashlib
import os

import pytest
from helpers import ACCESS_KEY, SECRET_KEY, s3_options, upload

from danp_pipeline import storage
from danp_pipeline.manifest.output import Output
from danp_pipeline.storage import uris


@pytest.mark.parametrize("key", ["a.jpg", "a/b.jpg", "a b/ünïcødé 写真.jpg", "x/.hidden.png", "a/b.jpg.png", "..a/b"])
def test_safe_key_accepts_ordinary_keys(key):
    assert storage.safe_key(key) == key


@pytest.mark.parametrize("key", ["", "../x.jpg", "a/../../x.jpg", "a/..", "/etc/passwd", "a//b.jpg", "./a.jpg",
                                 "a/./b.jpg", "a\\..\\b.jpg", "a\nb.jpg", "dir/"])
def test_safe_key_refuses_keys_that_could_escape_or_collide(key):
    with pytest.raises(storage.UnsafeKeyError, match="unsafe key"):
        storage.safe_key(key)


def test_output_keys_keep_the_extension_so_siblings_never_collide():
    output = Output(None, "out")
    assert output.image_path("a/b.jpg") == "out/images/a/b.jpg.png"
    assert output.image_path("a/b.tiff") == "out/images/a/b.tiff.png"
    keys = ["a/b.jpg", "a/b.tiff", "a/b.jpg.png", "a/b", "A/b.jpg"]
    assert len({output.image_path(k) for k in keys}) == len(keys)


def test_list_files_is_recursive_sorted_and_sized(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"12")
    (tmp_path / "a" / "b c").mkdir(parents=True)
    (tmp_path / "a" / "b c" / "ü.png").write_bytes(b"12345")
    fs, root = storage.filesystem(str(tmp_path))
    listed = list(storage.list_files(fs, root))
    assert [(k, s) for k, _, s in listed] == [("a/b c/ü.png", 5), ("z.jpg", 2)]
    assert all(p.startswith(root) for _, p, _ in listed)
    single = list(storage.list_files(fs, str(tmp_path / "z.jpg")))
    assert [(k, s) for k, _, s in single] == [("z.jpg", 2)]


def test_to_uri_is_canonical_and_has_no_user_info(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, root = storage.filesystem("./photos")
    assert storage.to_uri(fs, root) == f"file://{tmp_path}/photos"
    assert uris._USERINFO.sub("", "https://user:pw@host/x") == "https://host/x"


def test_atomic_write_local_replaces_whole_files_and_leaves_no_temp(tmp_path):
    fs, root = storage.filesystem(str(tmp_path))
    target = storage.join(root, "deep/er/out.png")
    storage.atomic_write(fs, target, b"first")
    storage.atomic_write(fs, target, b"second")
    assert open(target, "rb").read() == b"second"
    assert os.listdir(os.path.dirname(target)) == ["out.png"]
    with pytest.raises(TypeError):
        storage.atomic_write(fs, target, "not bytes")  # a failing write keeps the old file, no temp left
    assert open(target, "rb").read() == b"second"
    assert os.listdir(os.path.dirname(target)) == ["out.png"]


def test_read_hashed_hashes_as_it_reads(tmp_path):
    data = os.urandom(3 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    fs, root = storage.filesystem(str(tmp_path))
    hasher = hashlib.sha256()
    assert storage.read_hashed(fs, storage.join(root, "f"), hasher, chunk_size=1000) == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_s3_endpoint_comes_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert storage.resolve_options("s3://b/p")["endpoint_url"] == "http://127.0.0.1:1"
    assert storage.resolve_options("s3://b/p", {"endpoint_url": "http://x"})["endpoint_url"] == "http://x"
    assert "endpoint_url" not in storage.resolve_options("/local/path")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    resolved = storage.resolve_options("s3://b/p", {"client_kwargs": {"verify": False}})
    assert (resolved["key"], resolved["secret"]) == ("AKIAENV", "env-secret")  # shipped to remote workers
    assert resolved["client_kwargs"] == {"verify": False, "region_name": "eu-west-3"}
    assert storage.resolve_options("s3://b/p", {"profile": "prod"}).get("key") is None
    assert storage.resolve_options("s3://b/p", {"key": "K", "secret": "S"})["secret"] == "S"


def test_scrub_removes_credentials_from_options_environment_and_urls(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    options = {"key": "AKIAOPTIONKEY", "secret": "opt-secret", "client_kwargs": {"aws_session_token": "tok-1234"},
               "endpoint_url": "http://127.0.0.1:9000"}
    text = ("failed with AKIAOPTIONKEY/opt-secret tok-1234 env-secret-value at "
            "http://127.0.0.1:9000 and https://bob:pw@example.com/x")
    clean = storage.scrub(text, options)
    for secret in ("AKIAOPTIONKEY", "opt-secret", "tok-1234", "env-secret-value", "bob:pw"):
        assert secret not in clean
    assert "http://127.0.0.1:9000" in clean  # an endpoint is not a secret


@pytest.mark.integration
def test_s3_through_storage_options_and_through_environment(s3_endpoint, monkeypatch):
    upload(s3_endpoint, "danp-storage", "in", {"x/a.jpg": b"abc", "x/dir/": b"", "y.png": b"defg"})
    fs, root = storage.filesystem("s3://danp-storage/in", s3_options(s3_endpoint))
    assert [(k, s) for k, _, s in storage.list_files(fs, root)] == [("x/a.jpg", 3), ("y.png", 4)]
    storage.atomic_write(fs, "danp-storage/out/z.bin", b"payload")  # one PUT
    assert fs.cat_file("danp-storage/out/z.bin") == b"payload"

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs_env, root_env = storage.filesystem("s3://danp-storage/in", {"skip_instance_cache": True})
    assert [k for k, _, _ in storage.list_files(fs_env, root_env)] == ["x/a.jpg", "y.png"]
    assert storage.to_uri(fs_env, root_env) == "s3://danp-storage/in"
