"""Shared pieces for the storage/worker/pipeline tests: a moto S3 server on loopback, one local Ray
instance, and a set of real photos plus every kind of bad input the job must survive."""

from __future__ import annotations

import atexit
import io
import os
import signal
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from danp_pipeline.config import AttackConfig, PipelineConfig
from danp_pipeline.imaging.codec import decode_image, eps_levels

ACCESS_KEY = "AKIADANPTESTDUMMY"
SECRET_KEY = "s3cr3t-DANP-dummy-9f8e7d"  # never a real credential; tests assert it never leaks
REGION = "us-east-1"
#: Smallest settings that still run every stage of the attack.
FAST_ATTACK = AttackConfig(resolution=64, steps=2, num_timesteps=2)
FAST_ARGS = ["--model", "tiny-ip2p", "--resolution", "64", "--steps", "2", "--timesteps", "2", "--gpus-per-actor", "0"]

_moto = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (zombies are dead already and only wait to be reaped)."""
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


def kill_session(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL every process in the session of ``proc`` (started with ``start_new_session=True``) until
    none is left, then reap ``proc``: a job with its own Ray instance, or a Ray node, gone at once as
    on a machine that vanished. Only that session is signalled, never other runs' processes."""
    deadline = time.monotonic() + timeout
    while pids := session_pids(proc.pid):
        assert time.monotonic() < deadline, f"session {proc.pid} still has processes {pids} after {timeout} s"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    proc.wait(timeout=30)


def moto_endpoint() -> str:
    """Start moto's S3 server on 127.0.0.1 once per process; stopped at exit."""
    global _moto
    if _moto is None:
        from moto.server import ThreadedMotoServer

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        atexit.register(server.stop)
        _moto = f"http://127.0.0.1:{port}"
    return _moto


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    return moto_endpoint()


def s3_options(endpoint: str) -> dict:
    return {"endpoint_url": endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"region_name": REGION}}


def s3_env(endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION=REGION)
    return env


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION)


def upload(endpoint: str, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = s3_client(endpoint)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard), shared by every module."""
    import ray

    from danp_pipeline.job.pipeline import SLOW_START_ENV

    for name, value in SLOW_START_ENV.items():
        os.environ.setdefault(name, value)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    return ray


def fast_config(input_uri: str, output_uri: str, **changes) -> PipelineConfig:
    changes.setdefault("model", "tiny-ip2p")
    return PipelineConfig(input_uri=input_uri, output_uri=output_uri, attack=FAST_ATTACK, **changes).validate()


# -- photos ------------------------------------------------------------------------------------

def real_photo(name: str, size: tuple[int, int]) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb) with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_photos() -> dict[str, bytes]:
    """Real photos, JPEG and PNG, a few sizes, in nested prefixes."""
    return {
        "photos/2024/astronaut.jpg": encode(real_photo("astronaut", (96, 96)), "JPEG", quality=90),
        "photos/2024/summer/chelsea.png": encode(real_photo("chelsea", (120, 80)), "PNG"),
        "photos/2025/coffee.jpg": encode(real_photo("coffee", (100, 66)), "JPEG", quality=85),
        "photos/camera.png": encode(real_photo("camera", (64, 64)), "PNG"),
    }


def odd_photos() -> dict[str, bytes]:
    """Unusual but valid images: each must end as an ok row."""
    rgb = real_photo("astronaut", (72, 48))
    gray = real_photo("camera", (48, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    frames = [real_photo("chelsea", (40, 32)), real_photo("coffee", (40, 32))]
    sixteen = Image.fromarray((np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16))
    return {
        "odd/cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "odd/sixteen-bit.png": encode(sixteen, "PNG"),
        "odd/palette-transparent.png": encode(palette, "PNG", transparency=0),
        "odd/rgba.png": encode(rgba, "PNG"),
        "odd/gray.jpg": encode(gray, "JPEG"),
        "odd/exif-rotated.jpg": encode(rgb, "JPEG", exif=exif.tobytes()),
        "odd/animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "odd/panorama.png": encode(real_photo("coffee", (400, 16)), "PNG"),
        "odd/dir with space/ünïcødé 写真.jpg": encode(rgb, "JPEG"),
        "a/b.jpg": encode(rgb, "JPEG"),
        "a/b.tiff": encode(real_photo("chelsea", (64, 48)), "TIFF"),
    }


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """Inputs that must end as error rows: key -> (bytes, part of the expected reason)."""
    jpeg = encode(real_photo("astronaut", (96, 96)), "JPEG")
    png = encode(real_photo("chelsea", (96, 64)), "PNG")
    return {
        "bad/empty.jpg": (b"", "empty file"),
        "bad/random.jpg": (np.random.default_rng(0).bytes(3000), "not an image"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "bad/truncated.png": (png[: len(png) // 2], "truncated"),
        "bad/bomb.png": (png_header_only(50_000, 50_000), "too large"),
        "bad/tiny.png": (encode(real_photo("camera", (4, 4)), "PNG"), "too small"),
        "bad/notes.txt": (b"these are not pixels\n", "not an image"),
    }


def check_linf(source: bytes, output: bytes, eps: float) -> int:
    """Decode both and return max |out − in| in levels, after checking size, mode class and alpha."""
    src, out = decode_image(source), decode_image(output)
    assert (out.width, out.height) == (src.width, src.height)
    assert out.grayscale == src.grayscale
    assert (out.alpha is None) == (src.alpha is None)
    if src.alpha is not None:
        assert np.array_equal(out.alpha, src.alpha)
    if src.pixels16 is not None and out.pixels16 is not None:   # 16-bit kept: the bound in 16-bit units
        diff16 = int(np.abs(out.pixels16.astype(np.int32) - src.pixels16.astype(np.int32)).max())
        assert diff16 <= eps_levels(eps) * 257, diff16
        return -(-diff16 // 257)
    diff = int(np.abs(out.rgb.astype(np.int16) - src.rgb.astype(np.int16)).max())
    assert diff <= eps_levels(eps), diff
    return diff


def protect_rows(run, batch):
    """The job's decode → protect → write → commit stages on one batch of read objects, without Ray:
    one manifest row per object, committed as one part as the driver would."""
    from danp_pipeline.job import outputs, reader
    from danp_pipeline.job.identity import Run
    from danp_pipeline.job.worker import Protector

    run = run if isinstance(run, Run) else Run.start(run)
    if isinstance(batch, list):
        import pyarrow as pa

        batch = pa.Table.from_pylist(batch, schema=reader.READ_SCHEMA)
    rows = outputs.write_outputs(Protector(run)(reader.decode_objects(batch, run=run)), run=run)
    run.output.commit(rows.to_pylist())
    return rows
