"""Content credentials (C2PA): sign each protected output, and validate signed outputs in verify.

A signed output carries one C2PA manifest: a ``c2pa.opened`` action on the source (the parent
ingredient, identified by its SHA-256 as ``instance_id``), a ``c2pa.edited`` action whose software
agent is danp-pipeline with its version and the run's ``config_sha256``, and the
``c2pa.training-mining`` assertion with AI training, generative training, inference and data
mining all ``notAllowed``. No thumbnails (the C2PA SDK's default would embed a JPEG of the
photo and of its ingredient in every output): the manifest costs about 4 KB per photo.

The certificate chain and key are read from files (``--c2pa-cert``/``--c2pa-key``, or the files
named by ``DANP_C2PA_CERT``/``DANP_C2PA_KEY``, e.g. mounted secrets). Key material never leaves
this module: no message, log line or manifest row contains it.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import storage

logger = logging.getLogger(__name__)

MIME_TYPES = {"png": "image/png", "webp-lossless": "image/webp", "webp": "image/webp", "tiff": "image/tiff",
              "jpeg": "image/jpeg", "heic": "image/heic", "avif": "image/avif"}
SOURCE_MIME_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff",
                     "WEBP": "image/webp", "HEIF": "image/heic", "AVIF": "image/avif", "GIF": "image/gif"}
TRAINING_MINING = {"label": "c2pa.training-mining", "data": {"entries": {
    name: {"use": "notAllowed"}
    for name in ("c2pa.ai_training", "c2pa.ai_generative_training", "c2pa.ai_inference", "c2pa.data_mining")}}}
#: Validation codes that are not failures of the file itself: an unknown CA is "untrusted" unless
#: the verifier was given trust anchors.
UNTRUSTED = "signingCredential.untrusted"
_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


class CredentialsError(ValueError):
    """Credentials missing, unreadable or rejected; the message names the file, never its contents."""


def _read(uri: str, what: str, storage_options: Mapping[str, Any] | None) -> bytes:
    try:
        fs, path = storage.filesystem(uri, storage_options)
        data = fs.cat_file(path)
    except Exception as exc:
        raise CredentialsError(f"cannot read the C2PA {what} {uri!r}: {type(exc).__name__}") from None
    if not data.strip():
        raise CredentialsError(f"the C2PA {what} {uri!r} is empty")
    return data


def _algorithm(key_pem: bytes, key_uri: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except Exception:
        raise CredentialsError(f"the C2PA key {key_uri!r} is not an unencrypted PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in algs:
            raise CredentialsError(f"the C2PA key {key_uri!r} uses curve {key.curve.name}; C2PA needs P-256/384/521")
        return algs[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise CredentialsError(f"the C2PA key {key_uri!r} is of an unsupported type {type(key).__name__}")


@dataclass
class Signer:
    """Signs protected outputs with one certificate chain and key (a probe signature on load)."""

    cert_uri: str
    alg: str
    _chain: bytes
    _key: bytes

    def __repr__(self) -> str:  # never show the key
        return f"Signer(cert_uri={self.cert_uri!r}, alg={self.alg!r})"

    @classmethod
    def load(cls, cert_uri: str, key_uri: str, storage_options: Mapping[str, Any] | None = None) -> "Signer":
        chain = _read(cert_uri, "certificate chain", storage_options)
        if b"-----BEGIN CERTIFICATE-----" not in chain:
            raise CredentialsError(f"the C2PA certificate chain {cert_uri!r} holds no PEM certificate")
        key = _read(key_uri, "key", storage_options)
        signer = cls(cert_uri, _algorithm(key, key_uri), chain, key)
        signer.probe()
        return signer

    def probe(self) -> None:
        """Sign a 8x8 PNG: a key that does not match the certificate, or a certificate the C2PA
        profile rejects (no digitalSignature use, self-signed, expired…), fails here, before any work."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="PNG")
        try:
            self.sign(buf.getvalue(), "png", buf.getvalue(), "PNG", source_sha256="0" * 64, config_sha256="probe",
                      title="probe.png")
        except Exception as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise CredentialsError(f"C2PA credentials {self.cert_uri!r} rejected: {reason}") from None

    def sign(self, output: bytes, fmt: str, source: bytes, source_format: str | None, *, source_sha256: str,
             config_sha256: str, title: str, version: str = "unknown") -> bytes:
        """``output`` (encoded as ``fmt``) with a signed C2PA manifest embedded."""
        import c2pa

        agent = {"name": "danp-pipeline", "version": version, "config_sha256": config_sha256}
        manifest = {
            "claim_generator_info": [{"name": "danp-pipeline", "version": version}],
            "title": title,
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": [{
                    "action": "c2pa.edited", "softwareAgent": agent,
                    "description": "imperceptible perturbation against AI editing (DANP)"}]}},
                TRAINING_MINING,
            ],
        }
        context = c2pa.Context.from_dict(_SETTINGS)
        info = c2pa.C2paSignerInfo(self.alg.encode(), self._chain, self._key, None)
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest, context=context) as builder:
            builder.set_intent(c2pa.C2paBuilderIntent.EDIT)
            ingredient = {"title": title, "relationship": "parentOf", "instance_id": f"sha256:{source_sha256}",
                          "description": f"source sha256 {source_sha256}"}
            source_mime = SOURCE_MIME_TYPES.get(source_format or "")
            # the SDK reads the ingredient's bytes for a manifest of its own; a source format it
            # cannot parse (BMP, …) is identified by its hash alone, with the output's bytes as stand-in
            stream, mime = (source, source_mime) if source_mime else (output, MIME_TYPES[fmt])
            builder.add_ingredient(ingredient, mime, io.BytesIO(stream))
            dest = io.BytesIO()
            builder.sign(signer, MIME_TYPES[fmt], io.BytesIO(output), dest)
        return dest.getvalue()


@dataclass(frozen=True)
class Validation:
    state: str                  # "Trusted", "Valid", "Invalid" or "absent"
    failures: tuple[str, ...]   # validation codes that fail the file
    assertions: tuple[str, ...]
    actions: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.state in ("Trusted", "Valid") and not self.failures


def validate(data: bytes, mime: str | None = None, trust_anchors: str | None = None) -> Validation:
    """Read and validate the C2PA manifest in ``data``. Without ``trust_anchors`` (PEM), an unknown
    CA is not a failure; with them, the signer must chain to one."""
    import c2pa

    settings: dict[str, Any] = {}
    if trust_anchors:
        settings = {"trust": {"user_anchors": trust_anchors}, "verify": {"verify_trust": True}}
    context = c2pa.Context.from_dict(settings) if settings else None
    try:
        reader = c2pa.Reader(mime or "", io.BytesIO(data), context=context) if context else \
            c2pa.Reader(mime or "", io.BytesIO(data))
    except c2pa.C2paError as exc:
        text = str(exc)
        state = "absent" if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in text else "Invalid"
        return Validation(state, (text.splitlines()[0][:200] if text else type(exc).__name__,), (), ())
    with reader:
        report = json.loads(reader.json())
        state = reader.get_validation_state() or "Invalid"
    active = report.get("manifests", {}).get(report.get("active_manifest"), {})
    results = report.get("validation_results", {}).get("activeManifest", {})
    codes = [f.get("code", "") for f in results.get("failure", [])]
    failures = tuple(c for c in codes if trust_anchors or c != UNTRUSTED)
    assertions = tuple(a.get("label", "") for a in active.get("assertions", []))
    actions = tuple(act.get("action", "") for a in active.get("assertions", [])
                    if a.get("label", "").startswith("c2pa.actions") for act in a.get("data", {}).get("actions", []))
    if state == "Invalid" and not failures and not trust_anchors and codes == [UNTRUSTED] * len(codes):
        state = "Valid"
    return Validation(state, failures, assertions, actions)
