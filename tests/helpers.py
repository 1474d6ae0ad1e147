"""What the tests share besides fixtures (those are in conftest.py): photos and the bytes of every kind
of file the job reads, a moto S3 server on loopback, the smallest attack settings, the job's stages
called without Ray, real archive files with metadata, a test CA for C2PA signing and a tiny random editor of
the textured micro world.

Test modules import it as ``from helpers import …`` (pyproject.toml puts tests/ on the path)."""

from __future__ import annotations

import atexit
import datetime
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
import torch
from PIL import Image

from danp_pipeline.config import AttackConfig, PipelineConfig
from danp_pipeline.imaging import formats
from danp_pipeline.imaging.codec import decode_image, eps_levels
from danp_pipeline.imaging.metadata import Metadata

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


def fast_config(input_uri: str, output_uri: str, **changes) -> PipelineConfig:
    changes.setdefault("model", "tiny-ip2p")
    changes.setdefault("report", False)    # tests that want the report ask for it
    return PipelineConfig(input_uri=input_uri, output_uri=output_uri, attack=FAST_ATTACK, **changes)


# -- photos ------------------------------------------------------------------------------------

def photo(name: str = "astronaut", size: tuple[int, int] | None = (64, 64)) -> np.ndarray:
    """A real photo from scikit-image's bundled data, RGB (or gray) uint8, optionally resized to (w, h)."""
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    if size is not None:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img)


def synthetic_photo(size: tuple[int, int] = (96, 64), seed: int = 0) -> np.ndarray:
    """A seeded colour gradient with noise, RGB uint8 of (w, h): a photo-like image of any size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 127 / sum(size)], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    """``image`` (an array or a PIL image) as the bytes of a ``fmt`` file; PNG at zlib level 1 unless told
    (fast, and lossless at any level)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if fmt == "PNG":
        kwargs.setdefault("compress_level", 1)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def as_batch(*arrays: np.ndarray) -> torch.Tensor:
    """RGB uint8 arrays as one float batch [B,3,H,W] in [0,1]."""
    return torch.stack([torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255 for a in arrays])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb) with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_photos() -> dict[str, bytes]:
    """Real photos, JPEG and PNG, a few sizes, in nested prefixes."""
    return {
        "photos/2024/astronaut.jpg": encode(photo("astronaut", (96, 96)), "JPEG", quality=90),
        "photos/2024/summer/chelsea.png": encode(photo("chelsea", (120, 80)), "PNG"),
        "photos/2025/coffee.jpg": encode(photo("coffee", (100, 66)), "JPEG", quality=85),
        "photos/camera.png": encode(photo("camera", (64, 64)), "PNG"),
    }


def odd_photos() -> dict[str, bytes]:
    """Unusual but valid images: each must end as an ok row."""
    rgb = Image.fromarray(photo("astronaut", (72, 48)))
    gray = Image.fromarray(photo("camera", (48, 40)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    frames = [Image.fromarray(photo("chelsea", (40, 32))), Image.fromarray(photo("coffee", (40, 32)))]
    sixteen = Image.fromarray((np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16))
    return {
        "odd/cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "odd/sixteen-bit.png": encode(sixteen, "PNG"),
        "odd/palette-transparent.png": encode(palette, "PNG", transparency=0),
        "odd/rgba.png": encode(rgba, "PNG"),
        "odd/gray.jpg": encode(gray, "JPEG"),
        "odd/exif-rotated.jpg": encode(rgb, "JPEG", exif=exif.tobytes()),
        "odd/animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "odd/panorama.png": encode(photo("coffee", (400, 16)), "PNG"),
        "odd/dir with space/ünïcødé 写真.jpg": encode(rgb, "JPEG"),
        "a/b.jpg": encode(rgb, "JPEG"),
        "a/b.tiff": encode(photo("chelsea", (64, 48)), "TIFF"),
    }


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """Inputs that must end as error rows: key -> (bytes, part of the expected reason)."""
    jpeg = encode(photo("astronaut", (96, 96)), "JPEG")
    png = encode(photo("chelsea", (96, 64)), "PNG")
    return {
        "bad/empty.jpg": (b"", "empty file"),
        "bad/random.jpg": (np.random.default_rng(0).bytes(3000), "not an image"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "bad/truncated.png": (png[: len(png) // 2], "truncated"),
        "bad/bomb.png": (png_header_only(50_000, 50_000), "too large"),
        "bad/tiny.png": (encode(photo("camera", (4, 4)), "PNG"), "too small"),
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


def read_files(cfg: PipelineConfig, files: dict[str, bytes]):
    """Write ``files`` (key -> bytes) under the config's local INPUT and read them with the job's read
    stage: the batch of read objects, in ``files``' order."""
    import pyarrow as pa

    from danp_pipeline.job import reader

    items = []
    for key, data in files.items():
        path = Path(cfg.input_uri) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        items.append({"source_key": key, "source_uri": f"file://{path}", "path": str(path), "size": len(data),
                      "prompts": [], "source_etag": None})
    return reader.read_objects(pa.Table.from_pylist(items), input_uri=cfg.input_uri, storage_options={},
                               max_pixels=cfg.max_pixels)


def protect_files(cfg: PipelineConfig, files: dict[str, bytes]) -> list[dict]:
    """:func:`read_files`, then protect them with :func:`protect_rows`; every row must be ok. The manifest
    rows, in ``files``' order."""
    rows = protect_rows(cfg, read_files(cfg, files)).to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * len(files), [r["error"] for r in rows]
    return rows

# -- archive files: ICC profile, EXIF/XMP/IPTC, a test CA for C2PA ----------------------------------

XMP = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'exif:GPSLatitude="48,51.5N" exif:GPSLongitude="2,21.1E"><dc:creator><rdf:Seq><rdf:li>Ada Archivist'
       b'</rdf:li></rdf:Seq></dc:creator><dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) 2026 Archive'
       b'</rdf:li></rdf:Alt></dc:rights></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
# IPTC-NAA: record 2 — 2:05 object name, 2:80 by-line, 2:116 copyright notice
IPTC = b"".join(b"\x1c\x02" + bytes([tag]) + struct.pack(">H", len(v)) + v
                for tag, v in ((5, b"Harbour at dawn"), (80, b"Ada Archivist"), (116, b"(c) 2026 Archive")))


def _s15f16(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def display_p3_icc() -> bytes:
    """A valid ICC v2 matrix/TRC display profile with Display P3 primaries (D50-adapted), gamma 2.2."""
    def xyz(x, y, z):
        return b"XYZ \x00\x00\x00\x00" + _s15f16(x) + _s15f16(y) + _s15f16(z)
    desc_text = b"Display P3 (danp test)\x00"
    desc = b"desc\x00\x00\x00\x00" + struct.pack(">I", len(desc_text)) + desc_text + b"\x00" * 12 + b"\x00" * 67
    curv = b"curv\x00\x00\x00\x00" + struct.pack(">I", 1) + struct.pack(">H", round(2.2 * 256)) + b"\x00\x00"
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.5151, 0.2412, -0.0011)),
            (b"gXYZ", xyz(0.2920, 0.6922, 0.0419)), (b"bXYZ", xyz(0.1571, 0.0666, 0.7841)),
            (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv),
            (b"cprt", b"text\x00\x00\x00\x00no copyright\x00\x00\x00\x00")]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\x00" * (-len(data) % 4)
    size = 128 + 4 + len(table) + len(body)
    header = (struct.pack(">I", size) + b"lcms" + b"\x02\x10\x00\x00" + b"mntrRGB XYZ " + b"\x07\xea\x00\x01\x00\x01"
              + b"\x00" * 6 + b"acsp" + b"APPL" + b"\x00" * 4 + b"\x00" * 4 + b"\x00" * 4 + b"\x00" * 8 + b"\x00" * 4
              + _s15f16(0.9642) + _s15f16(1.0) + _s15f16(0.8249) + b"\x00" * 4 + b"\x00" * 16 + b"\x00" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def exif_block(orientation: int = 1, gps: bool = True) -> bytes:
    """EXIF (with the Exif\\0\\0 prefix) as a camera writes it: IFD0, Exif IFD and optionally GPS."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "DANP Camera", "Model 13", orientation
    exif[0x013B], exif[0x8298], exif[0x0132] = "Ada Archivist", "(c) 2026 Archive", "2026:12:02 09:30:00"
    exif.get_ifd(0x8769)[0x9003] = "2026:12:02 09:30:00"
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 21.0, 6.0)})
    return exif.tobytes()


def archive_files() -> dict[str, bytes]:
    """The five archive cases (JPEG, Display-P3 PNG, 16-bit TIFF, HEIC, AVIF), each carrying metadata."""
    rgb, icc = synthetic_photo(), display_p3_icc()
    jpeg = formats.encode(synthetic_photo((64, 96), 1), None, "jpeg",
                          Metadata(icc=icc, exif=exif_block(orientation=6)[6:], xmp=XMP, iptc=IPTC), quality=95)[0]
    png = formats.encode(rgb, None, "png", Metadata(icc=icc, exif=exif_block()[6:], xmp=XMP))[0]
    deep = (synthetic_photo((80, 48), 2).astype(np.uint16) * 257
            + np.random.default_rng(3).integers(0, 257, (48, 80, 3))).astype(np.uint16)
    tiff_tags = ((315, "Ada Archivist"), (33432, "(c) 2026 Archive"))
    tiff = formats.encode(deep, None, "tiff", Metadata(icc=icc, xmp=XMP, iptc=IPTC, tiff_tags=tiff_tags))[0]
    heic = formats.encode(rgb, None, "heic", Metadata(icc=icc, exif=exif_block()[6:], xmp=XMP), quality=90)[0]
    avif = formats.encode(rgb, None, "avif", Metadata(icc=icc, exif=exif_block()[6:], xmp=XMP), quality=90)[0]
    return {"arch/camera.jpg": jpeg, "arch/p3.png": png, "arch/scan16.tiff": tiff, "arch/iphone.heic": heic,
            "arch/phone.avif": avif}


def make_test_ca(tmp_path, *, mismatched_key: bool = False) -> tuple[str, str, str]:
    """(chain.pem, key.pem, anchors.pem) paths: an ES256 signer certificate issued by a test root CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "danp test")])

    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject, issuer, public, signer_key, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage),
                                  critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        if not ca:
            usage_ext = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
            issuer_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
            builder = builder.add_extension(usage_ext, critical=False).add_extension(issuer_key_id, critical=False)
        return builder.sign(signer_key, hashes.SHA256())

    root = cert(name("danp test root"), name("danp test root"), ca_key.public_key(), ca_key, True)
    leaf = cert(name("danp signer"), root.subject, key.public_key(), ca_key, False)
    pem = serialization.Encoding.PEM
    used = ec.generate_private_key(ec.SECP256R1()) if mismatched_key else key
    paths = (tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "anchors.pem")
    paths[0].write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    paths[1].write_bytes(used.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths[2].write_bytes(root.public_bytes(pem))
    return tuple(str(p) for p in paths)


def read_back(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def tiny_proxy_config():
    """proxy-ip2p's geometry (textured world, 8x VAE, 4-channel latents) at the smallest widths."""
    from danp_pipeline.micro import training

    cfg = training.variant_proxy(training.EditorConfig())
    cfg.vae.block_out_channels, cfg.vae.norm_num_groups = (8, 8, 8, 8), 4
    cfg.unet = training.UNetConfig(block_out_channels=(16, 32), cross_attention_dim=32, norm_num_groups=8)
    cfg.text = training.TextConfig(hidden_size=32, intermediate_size=64)
    return cfg


def tiny_proxy_editor(out: Path, seed: int = 0, kind: str = "ip2p") -> Path:
    """A random-weight editor with proxy-ip2p's geometry saved in diffusers layout at ``out`` (recorded as an
    editor of the textured world, as training records it): loads with load_editor, edits, does not edit well.
    ``kind="sd-inpaint"``: proxy-inpaint's (a 9-channel inpainting UNet)."""
    from danp_pipeline.micro import textures, training, world
    from danp_pipeline.micro.tokenizer import build_tokenizer

    cfg = tiny_proxy_config()
    torch.manual_seed(seed)
    vae = training.make_vae(cfg.vae, textures.SIZE)
    latent = cfg.vae.latent_channels
    unet = training.make_unet(cfg.unet, latent, textures.SIZE // textures.LATENT_FACTOR,
                              latent + (kind == "sd-inpaint"))
    tok = build_tokenizer(world.vocabulary(), out.parent / f"{out.name}-tokenizer", model_max_length=16)
    text = training.make_text_encoder(cfg.text, tok, cfg.unet.cross_attention_dim)
    training.save_editor(out, vae, unet, text, tok, {"config": {"world": cfg.world, "kind": kind}},
                         cfg.prediction_type, kind)
    return out
