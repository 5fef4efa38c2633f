"""Ed25519 signatures over manifest.json (which holds the sha256 of every other shipped file).

Keys are PEM files, the same as OpenSSL's, so either tool can make and check them:
    openssl genpkey -algorithm ed25519 -out edgepack.key
    openssl pkey -in edgepack.key -pubout -out edgepack.pub
    openssl pkeyutl -verify -pubin -inkey edgepack.pub -rawin -in manifest.json -sigfile manifest.sig
manifest.sig holds the raw 64-byte signature. Ed25519 signing is deterministic, so the same key
and manifest give the same signature (reproducible bundles stay reproducible when signed).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import UsageError

SIGNATURE = "manifest.sig"


def generate_keypair(private_path: Path, public_path: Path, overwrite: bool = False) -> None:
    """Write a new private key (PEM, PKCS#8, mode 0600) and its public key (PEM)."""
    for path in (private_path, public_path):
        _check_key_destination(path, overwrite)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    written: list[Path] = []
    try:
        private_path.touch(mode=0o600, exist_ok=overwrite)
        written.append(private_path)
        private_path.chmod(0o600)
        private_path.write_bytes(private_pem)
        written.append(public_path)
        public_path.write_bytes(public_pem)
    except OSError as exc:  # never leave half a key pair behind
        for path in written:
            path.unlink(missing_ok=True)
        raise UsageError(
            f"Cannot write {exc.filename or private_path}: {exc.strerror}.", "Choose a path you can write to."
        ) from exc


def _check_key_destination(path: Path, overwrite: bool) -> None:
    """Like ssh-keygen, the folder must already exist: a typo in it should not silently create folders."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder.", "Give the key file's path, e.g. keys/release.key.")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists.", "Choose another path, or pass --force to replace it.")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(
            f"Cannot write {path}: the folder {folder} does not exist.",
            f"Create it first (mkdir -p {folder}), as with ssh-keygen, or choose another path.",
        )


def sign_manifest(bundle_dir: Path, private_key_path: Path) -> Path:
    signature = _private_key(private_key_path).sign((bundle_dir / "manifest.json").read_bytes())
    (bundle_dir / SIGNATURE).write_bytes(signature)
    return bundle_dir / SIGNATURE


def signature_problem(bundle_dir: Path, public_key_path: Path) -> str | None:
    """Why manifest.sig does not prove that the holder of the key signed manifest.json; None when it does."""
    key = _public_key(public_key_path)
    signature_path = bundle_dir / SIGNATURE
    if not signature_path.is_file():
        return f"{SIGNATURE} is missing: the bundle is not signed"
    try:
        key.verify(signature_path.read_bytes(), (bundle_dir / "manifest.json").read_bytes())
    except InvalidSignature:
        return f"{SIGNATURE} is not a valid signature of manifest.json by this key (tampered manifest, or another key)"
    return None


def key_id(private_key_path: Path) -> str:
    """A short fingerprint of the key pair: the first 16 hex digits of the sha256 of the raw 32-byte public
    key (names which key signed a bundle, e.g. in MLflow tags, without the key itself)."""
    public = _private_key(private_key_path).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def check_private_key(path: Path) -> None:
    """UsageError unless `path` holds an unencrypted Ed25519 private key."""
    _private_key(path)


def _private_key(path: Path) -> Ed25519PrivateKey:
    key = _load(path, lambda data: serialization.load_pem_private_key(data, password=None))
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(
            f"{path} is not an Ed25519 private key.",
            "Make one with `edgepack keygen` or `openssl genpkey -algorithm ed25519`.",
        )
    return key


def _public_key(path: Path) -> Ed25519PublicKey:
    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key.", "Pass the .pub file written by `edgepack keygen`.")
    return key


def _load(path: Path, parse):
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"Cannot read key file {path}: {exc.strerror}.", "Check the key path.") from exc
    try:
        return parse(data)
    except (ValueError, TypeError) as exc:
        if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or "Password was not given" in str(exc):
            raise UsageError(
                f"{path} is an encrypted private key: edgepack signs unattended and takes no password.",
                f"Decrypt a copy for signing (openssl pkey -in {path} -out unencrypted.key) and keep it as "
                "safe as the original, or make a key with `edgepack keygen`.",
            ) from exc
        raise UsageError(
            f"{path} is not a PEM key: {exc}", "Use a PEM key from `edgepack keygen` or openssl (unencrypted)."
        ) from exc
