"""Object-store faults: transient errors are retried with backoff, permanent ones become error rows.

The job runs against a fault-injecting HTTP proxy in front of the moto S3 server: every third
request is answered ``503 ServiceUnavailable`` (a deterministic counter, at most once per distinct
method + URL so that every operation can succeed within the retry budget) and one key is refused
with ``403 AccessDenied`` every time. botocore's own retries are switched off (``max_attempts: 1``)
so the retries that save the job are the pipeline's.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError
from helpers import FAST_ARGS, SECRET_KEY, encode, fast_config, photo, s3_options, upload

from danp_pipeline import cli, storage
from danp_pipeline.job import pipeline
from danp_pipeline.manifest import provenance, verify
from danp_pipeline.manifest.output import Output
from danp_pipeline.storage import objects

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` that fails every ``every``-th request with 503 (once per
    method + URL) and every request whose path contains one of ``deny`` with 403."""

    def __init__(self, upstream: str, every: int = 3, deny: tuple[str, ...] = ()) -> None:
        self.upstream = urlsplit(upstream)
        self.every, self.deny = every, deny
        self.lock = threading.Lock()
        self.count = self.transient = self.denied = 0
        self.failed_once: set[tuple[str, str]] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one(self) -> None:
                body = self._body()
                verdict = proxy.verdict(self.command, self.path)
                if verdict:
                    status, code = verdict
                    payload = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>"
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload.encode())
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else (b"" if self.command in ("PUT", "POST") else None)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verdict(self, method: str, path: str) -> tuple[int, str] | None:
        with self.lock:
            self.count += 1
            if any(d in path for d in self.deny):
                self.denied += 1
                return 403, "AccessDenied"
            if self.count % self.every == 0 and (method, path) not in self.failed_once:
                self.failed_once.add((method, path))
                self.transient += 1
                return 503, "ServiceUnavailable"
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def no_botocore_retries(options: dict) -> dict:
    return {**options, "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}}}


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def test_retrying_retries_only_transient_errors_and_gives_up_after_the_budget(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(objects.time, "sleep", sleeps.append)

    def flaky(failures: list[BaseException]):
        calls = []

        def fn():
            calls.append(1)
            if failures:
                raise failures.pop(0)
            return "done"
        return fn, calls

    wrapped = OSError("upstream said no")
    wrapped.__cause__ = client_error("SlowDown", 503)
    fn, calls = flaky([client_error("ServiceUnavailable", 503), ConnectionResetError(), wrapped])
    assert storage.retrying(fn, what="t") == "done" and len(calls) == 4
    assert len(sleeps) == 3 and sleeps[0] <= sleeps[1] <= sleeps[2] <= objects.RETRY_MAX_S  # backoff grows

    for permanent in (client_error("AccessDenied", 403), FileNotFoundError("gone"), PermissionError("no")):
        fn, calls = flaky([permanent])
        with pytest.raises(type(permanent)):
            storage.retrying(fn)
        assert len(calls) == 1

    fn, calls = flaky([TimeoutError()] * 10)
    with pytest.raises(TimeoutError):
        storage.retrying(fn, attempts=3)
    assert len(calls) == 3


@pytest.mark.integration
def test_job_survives_a_flaky_s3_endpoint_and_records_permanent_failures(s3_endpoint, ray_local):
    photos = {f"in/{i}.jpg": encode(photo(name, (64, 48)), "JPEG")
              for i, name in enumerate(["astronaut", "chelsea", "coffee", "camera", "astronaut", "chelsea"])}
    photos["in/denied.jpg"] = encode(photo("coffee", (64, 48)), "JPEG")
    upload(s3_endpoint, "danp-flaky", "src", photos)
    upload(s3_endpoint, "danp-flaky-out", "unrelated", {})
    proxy = FaultProxy(s3_endpoint, every=3, deny=("/danp-flaky/src/in/denied.jpg",))
    try:
        options = no_botocore_retries(s3_options(proxy.endpoint))
        cfg = fast_config("s3://danp-flaky/src", "s3://danp-flaky-out/run", storage_options=options)
        summary = pipeline.run(cfg)
    finally:
        proxy.close()
    assert proxy.transient >= 10 and proxy.denied >= 1, (proxy.transient, proxy.denied)
    assert (summary.ok, summary.errors) == (6, 1)

    direct = s3_options(s3_endpoint)
    fs, root = storage.filesystem(cfg.output_uri, {**direct, "skip_instance_cache": True})
    rows = provenance.read_manifest(fs, Output(fs, root).manifest_dir).to_pylist()
    assert sorted(r["source_key"] for r in rows) == sorted(k.removeprefix("src/") for k in photos)  # once each
    denied = next(r for r in rows if r["source_key"] == "in/denied.jpg")
    # a HEAD's 403 carries no body (botocore reports the HTTP reason), a GET's carries the proxy's message:
    # which request meets the denial first depends on what fs caches, so both are the same permanent failure
    assert denied["status"] == "error" and denied["error"] in ("read failed: PermissionError: Forbidden",
                                                               "read failed: PermissionError: injected")
    assert SECRET_KEY not in denied["error"]
    assert all(r["status"] == "ok" for r in rows if r is not denied)
    assert verify.verify(cfg.output_uri, direct).ok


def one_error_line(caplog, command: list[str]) -> tuple[int, str]:
    """Run a CLI command in this process: its exit status and its only ERROR line."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        status = cli.entrypoint(command)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return status, errors[0]


@pytest.mark.integration
def test_a_corrupt_manifest_part_is_named_in_one_line_by_run_verify_and_compact(tmp_path, ray_local, caplog):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    run = ["run", str(tmp_path / "in"), str(out), *FAST_ARGS]
    for name in ("astronaut", "coffee"):                    # one run, so one part, per photo: two parts
        (tmp_path / "in" / f"{name}.jpg").write_bytes(encode(photo(name, (64, 48)), "JPEG"))
        assert cli.entrypoint(run) == 0
    parts = sorted((out / "manifest").glob("part-*.parquet"))
    assert len(parts) == 2
    part, data = parts[0], parts[0].read_bytes()
    redone = provenance.read_part(storage.filesystem(str(out))[0], str(part), ["source_uri"]).num_rows

    part.write_bytes(data[: len(data) // 2])                # truncated, as by a full disk or a bad copy
    for command in (run, ["verify", str(out)], ["compact", str(out)]):
        status, line = one_error_line(caplog, command)
        assert status == 2, (command[0], status)
        assert line.startswith(f"manifest part file://{part} is unreadable (Parquet magic bytes not found"), line
        assert line.endswith("move it aside, out of file://" + str(out / "manifest") + "/; the photos it recorded "
                             "are redone on the next run"), line
    part.write_bytes(b"")                                   # empty
    status, line = one_error_line(caplog, ["verify", str(out)])
    assert status == 2 and line.startswith(f"manifest part file://{part} is unreadable (Parquet file size is 0 bytes)")
    assert sorted((out / "manifest").glob("part-*.parquet")) == parts   # nothing was dropped or rewritten

    shutil.move(part, tmp_path / part.name)                # what the line says to do
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli.entrypoint(run) == 0
    assert f"{redone} to protect, 1 already done" in caplog.text
    assert cli.entrypoint(["verify", str(out)]) == 0
