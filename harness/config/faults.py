"""Fault profiles from TOML: `[faults.<policy>]` tables, and the profiles shipped in
`harness/profiles/`, read into a validated `FaultProfile`."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

from harness.core.policies import ALL_POLICIES, FaultProfile
from harness.core.spec import ConfigError, read_section

__all__ = ["parse_faults", "shipped_profiles"]


def shipped_profiles() -> dict[str, tuple[str, dict[str, Any]]]:
    """Shipped profiles by name: (one-line description, [faults] table)."""
    out = {}
    for entry in sorted(resources.files("harness.profiles").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            doc = tomllib.loads(entry.read_text(encoding="utf-8"))
            out[entry.name[:-5]] = (doc.get("description", ""), doc.get("faults", {}))
    return out


def parse_faults(table: Any, source: str, seed: int = 0) -> FaultProfile:
    """`[faults.<policy>]` tables (and `profile = "<shipped name>"` to start from a shipped
    profile) -> FaultProfile; unknown names list the known ones."""
    if table is None:
        return FaultProfile((), seed)
    if not isinstance(table, dict):
        raise ConfigError(
            source, "faults", "must be a table of policies, e.g. [faults.idle_timeout]"
        )
    table = dict(table)
    profile = table.pop("profile", None)
    if profile is not None:
        shipped = shipped_profiles()
        if profile not in shipped:
            raise ConfigError(
                source,
                "faults.profile",
                f"unknown profile {profile!r}; shipped: " + ", ".join(shipped),
            )
        table = {**shipped[profile][1], **table}
    policies = []
    for name, body in table.items():
        if name not in ALL_POLICIES:
            raise ConfigError(
                source,
                f"faults.{name}",
                "unknown fault policy; known: "
                + ", ".join(sorted(ALL_POLICIES))
                + ' (or profile = "name")',
            )
        policies.append((name, read_section(ALL_POLICIES[name], body, source, f"faults.{name}")))
    return FaultProfile(tuple(policies), seed)
