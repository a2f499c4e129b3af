"""Where workers connect: URL and headers, and a description with secrets redacted."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Target"]


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may carry keys

    @classmethod
    def fake(cls, url: str) -> Target:
        return cls("fake", url, {"Authorization": "Bearer rtsoak-fake-key"})

    def describe(self) -> dict[str, str]:
        """What may be written to manifests and reports: never header values."""
        return {"kind": self.kind, "url": self.url, "headers": ", ".join(sorted(self.headers))}

    def __repr__(self) -> str:
        return f"Target(kind={self.kind!r}, url={self.url!r}, headers=<redacted>)"
