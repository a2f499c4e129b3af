"""`--tls` for `serve` and `proxy`: a local CA and a certificate for 127.0.0.1/localhost, made
once with trustme and kept in the user's cache (never in the repo), because the official SDKs
dial wss:// and the Node SDK cannot be pointed at plain ws:// at all.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles", "cache_dir", "server_context", "tls_files"]

HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path  # the CA alone: NODE_EXTRA_CA_CERTS adds it to Node's own roots
    bundle: Path  # the CA plus this machine's roots: SSL_CERT_FILE replaces Python's
    server: Path  # the server's key and certificate chain (private: 0600)


def cache_dir(env: dict[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/rtsoak/tls, or ~/.cache/rtsoak/tls."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rtsoak" / "tls"


def tls_files(directory: Path | None = None) -> TlsFiles:
    """The CA and certificate, made on first use and reused after, so a client configured
    once keeps trusting every later start. Made in a temporary directory and renamed into
    place, so a serve and a proxy starting together never read half-written files."""
    directory = directory or cache_dir()
    files = TlsFiles(directory / "ca.pem", directory / "bundle.pem", directory / "server.pem")
    if all(p.is_file() for p in (files.ca, files.bundle, files.server)):
        return files
    import trustme

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tls-", dir=directory.parent))
    try:
        ca = trustme.CA(organization_name="rtsoak local CA")
        ca.cert_pem.write_to_path(str(staging / "ca.pem"))
        cert = ca.issue_cert(*HOSTS)
        cert.private_key_and_cert_chain_pem.write_to_path(str(staging / "server.pem"))
        (staging / "bundle.pem").write_bytes(ca.cert_pem.bytes() + _system_roots())
        os.chmod(staging / "server.pem", 0o600)
        if directory.exists():  # an incomplete earlier attempt
            shutil.rmtree(directory)
        os.rename(staging, directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not all(p.is_file() for p in (files.ca, files.bundle, files.server)):
            raise  # not another process's rename that won the race
    return files


def _system_roots() -> bytes:
    """This machine's default CA file, so SSL_CERT_FILE=bundle.pem still reaches real hosts."""
    paths = ssl.get_default_verify_paths()
    for name in (paths.cafile, paths.openssl_cafile):
        if name and os.path.isfile(name):
            return b"\n" + Path(name).read_bytes()
    return b""


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server)
    return context
