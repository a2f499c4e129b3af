"""Where workers connect: URL and headers, and a description with secrets redacted.

Keys come only from the environment (named as the official SDK names them) and travel only in
request headers; `describe()` and `repr()` never show them. Anything but loopback must be TLS.
A url target on loopback reaches nothing paid (`Target.paid`): it may run compressed, uncapped.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["Target", "TargetError", "build_target"]

OPENAI_BASE = "https://api.openai.com/v1"
LOOPBACK_NAMES = ("localhost",)
# what a url target on loopback sends when its key_env is unset: `rtsoak serve` takes any key
LOOPBACK_PLACEHOLDER_KEY = "rtsoak-loopback-key"
SECRET_WORDS = ("key", "token", "secret", "sig", "password", "auth")


def secret_params(url: str) -> list[str]:
    """Query parameters of a URL whose names suggest a credential."""
    return [
        k
        for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)
        if any(word in k.lower() for word in SECRET_WORDS)
    ]


def url_key_problem(url: str, setting: str) -> str | None:
    """Why a URL may not be used because it carries a key (never quoting the URL), or None."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return (
            f"{setting} carries credentials before its host (user:KEY@): keys belong in the "
            "environment (for [target] url: set key_env and header), never in URLs rtsoak "
            "prints or copies into runs"
        )
    if secret_params(url):
        return (
            f"{setting} carries {', '.join(secret_params(url))} in its query: keys belong in "
            "the environment (set [target] key_env and header), never in files rtsoak copies "
            "into runs"
        )
    return None


def redact_url(url: str) -> str:
    """The URL with credentials before the host and credential-like query values replaced."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
        url = parts.geturl()
    if not secret_params(url):
        return url
    query = [
        (k, "***" if k in secret_params(url) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return parts._replace(query=urlencode(query, safe="*")).geturl()


class TargetError(Exception):
    """A real target that cannot be used as configured: says which setting to fix."""


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may carry keys

    @classmethod
    def fake(cls, url: str) -> Target:
        return cls("fake", url, {"Authorization": "Bearer rtsoak-fake-key"})

    @property
    def paid(self) -> bool:
        """Whether the run may reach a paid endpoint, and so must run at 1x within caps.

        The one rule: every real target is paid except a url target on a loopback host
        (127.0.0.0/8, ::1, localhost), which is this machine (a `rtsoak serve` for a blind
        rehearsal). openai and azure stay paid even with a loopback base URL: that is how
        stand-ins for a paid service are pointed at."""
        if self.kind == "fake":
            return False
        return not (self.kind == "url" and _is_loopback(urlsplit(self.url).hostname))

    def describe(self) -> dict[str, str]:
        """What may be written to manifests, logs and reports: never header values, never a
        credential-looking query value."""
        return {
            "kind": self.kind,
            "url": redact_url(self.url),
            "headers": ", ".join(sorted(self.headers)),
        }

    def __repr__(self) -> str:
        return f"Target(kind={self.kind!r}, url={redact_url(self.url)!r}, headers=<redacted>)"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ws_url(base: str, setting: str) -> str:
    """http(s):// or ws(s):// base -> ws(s)://; plain ws:// only to this machine; no keys."""
    problem = url_key_problem(base, setting)
    if problem:
        raise TargetError(problem)
    parts = urlsplit(base)
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise TargetError(f"{setting}={base!r} is not an http(s) or ws(s) URL")
    if scheme == "ws" and not _is_loopback(parts.hostname):
        raise TargetError(
            f"{setting}={base!r}: only loopback may be reached without TLS; use https:// or wss://"
        )
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _key(env: Mapping[str, str], name: str) -> str:
    key = env.get(name, "").strip()
    if not key:
        raise TargetError(f"set {name} in the environment (the key is read from there only)")
    return key


def build_target(kind: str, section: Any, env: Mapping[str, str] | None = None) -> Target:
    """URL and headers for a real target from the scenario's [target] and the environment."""
    env = os.environ if env is None else env
    if kind == "openai":
        base = _ws_url(env.get("OPENAI_BASE_URL") or OPENAI_BASE, "OPENAI_BASE_URL")
        return Target(
            "openai",
            f"{base}/realtime?intent=transcription",
            {"Authorization": f"Bearer {_key(env, 'OPENAI_API_KEY')}"},
        )
    if kind == "azure":
        endpoint = env.get("AZURE_OPENAI_ENDPOINT", "")
        if not endpoint:
            raise TargetError("set AZURE_OPENAI_ENDPOINT (https://<resource>.openai.azure.com)")
        deployment = section.deployment or env.get("AZURE_OPENAI_DEPLOYMENT", "")
        if not deployment:
            raise TargetError(
                "set [target] deployment (or AZURE_OPENAI_DEPLOYMENT) to your Azure deployment name"
            )
        base = _ws_url(endpoint, "AZURE_OPENAI_ENDPOINT")
        if section.api_version:  # the preview path, still spoken by older deployments
            query = {
                "api-version": section.api_version,
                "intent": "transcription",
                "deployment": deployment,
            }
            url = f"{base}/openai/realtime?{urlencode(query)}"
        else:
            query = {"intent": "transcription", "deployment": deployment}
            url = f"{base}/openai/v1/realtime?{urlencode(query)}"
        return Target("azure", url, {"api-key": _key(env, "AZURE_OPENAI_API_KEY")})
    if kind == "url":
        if not section.url:
            raise TargetError("set [target] url to a ws:// or wss:// URL")
        url = _ws_url(section.url, "[target] url")
        query = urlsplit(section.url).query
        if _is_loopback(urlsplit(url).hostname) and not env.get(section.key_env, "").strip():
            key = LOOPBACK_PLACEHOLDER_KEY  # this machine: a key, if it checks one, is yours to set
        else:
            key = _key(env, section.key_env)
        value = f"Bearer {key}" if section.header.lower() == "authorization" else key
        return Target("url", url + (f"?{query}" if query else ""), {section.header: value})
    raise TargetError(f"unknown target {kind!r}; use fake, openai, azure or url")
