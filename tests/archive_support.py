"""Real archive files for the issue-13 tests: a Display-P3 ICC profile, EXIF/XMP/IPTC blocks, and
photos in JPEG, PNG, 16-bit TIFF, HEIC and AVIF carrying them; a test CA for C2PA signing."""

from __future__ import annotations

import datetime
import io
import struct

import numpy as np
from PIL import Image

from danp_pipeline.imaging import formats
from danp_pipeline.imaging.metadata import Metadata

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
            (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv), (b"cprt", b"text\x00\x00\x00\x00no copyright\x00\x00\x00\x00")]
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


def photo(size=(96, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 127 / sum(size)], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def archive_files() -> dict[str, bytes]:
    """The five archive cases of issue 13, each carrying metadata."""
    rgb, icc = photo(), display_p3_icc()
    jpeg = formats.encode(photo((64, 96), 1), None, "jpeg",
                          Metadata(icc=icc, exif=exif_block(orientation=6)[6:], xmp=XMP, iptc=IPTC), quality=95)[0]
    png = formats.encode(rgb, None, "png", Metadata(icc=icc, exif=exif_block()[6:], xmp=XMP))[0]
    deep = (photo((80, 48), 2).astype(np.uint16) * 257 + np.random.default_rng(3).integers(0, 257, (48, 80, 3))).astype(np.uint16)
    tiff = formats.encode(deep, None, "tiff", Metadata(icc=icc, xmp=XMP, iptc=IPTC,
                                                       tiff_tags=((315, "Ada Archivist"), (33432, "(c) 2026 Archive"))))[0]
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
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "danp test")])

    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject, issuer, public, signer_key, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
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
