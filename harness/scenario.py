"""Scenario files: TOML -> a validated, frozen Scenario, with errors naming file, field and fix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, load_toml, read_section, spec
from harness.fakeserver.faults import FaultProfile, parse_faults
from harness.reconnect import Backoff

__all__ = ["Scenario", "load_scenario"]


@dataclass(frozen=True, slots=True)
class RunSection:
    name: str = "unnamed"
    seed: int = spec(0, lo=0)
    duration: float = spec(60.0, kind="duration", lo=0.001)
    workers: int = spec(1, lo=1, hi=100_000)
    ramp_up: float = spec(0.0, kind="duration")
    time_scale: float = spec(1.0, kind="float", lo=0.001, hi=1000.0)
    target: str = spec("fake", choices=("fake",))


@dataclass(frozen=True, slots=True)
class AudioSection:
    dir: str = "fixtures/audio"


@dataclass(frozen=True, slots=True)
class PacingSection:
    chunk_ms: int = spec(20, lo=5, hi=2000)
    speed: float = spec(1.0, kind="float", lo=0.01, hi=100.0)


@dataclass(frozen=True, slots=True)
class TurnsSection:
    gap: float = spec(1.0, kind="duration")                 # idle, no frames, between utterances
    transcript_timeout: float = spec(15.0, kind="duration", lo=0.001)


@dataclass(frozen=True, slots=True)
class KeepaliveSection:
    """WebSocket pings from the client: the only way to notice a half-open connection."""

    ping_interval: float = spec(20.0, kind="duration")  # 0: no pings; the pong is due within half

    def heartbeat(self, scale: float) -> float | None:
        """aiohttp's heartbeat works in wall seconds."""
        return self.ping_interval / scale if self.ping_interval > 0 else None


@dataclass(frozen=True, slots=True)
class ProtocolSection:
    model: str = "gpt-4o-transcribe"
    language: str = "en"
    prompt: str = ""

    def session_update(self) -> dict[str, Any]:
        """The field report's GA configuration: own VAD, so turn_detection is null."""
        return {"type": "session.update", "session": {
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": None,
                "transcription": {"model": self.model, "language": self.language,
                                  "prompt": self.prompt}}}}}


@dataclass(frozen=True, slots=True)
class ServerSection:
    """Limits of the embedded fake server (service values by default)."""

    max_session: float = spec(3600.0, kind="duration", lo=1.0)
    latency_base: float = spec(0.25, kind="duration")
    latency_per_audio_second: float = spec(0.08, lo=0.0, hi=10.0)


@dataclass(frozen=True, slots=True)
class Scenario:
    source: str
    run: RunSection
    audio: AudioSection
    pacing: PacingSection
    turns: TurnsSection
    protocol: ProtocolSection
    keepalive: KeepaliveSection
    reconnect: Backoff
    server: ServerSection
    faults: FaultProfile = field(default_factory=FaultProfile)
    raw_faults: dict[str, Any] = field(default_factory=dict)

    def audio_dir(self) -> Path:
        """[audio] dir as given if it exists from here, else relative to the scenario file."""
        given = Path(self.audio.dir)
        if given.is_absolute() or given.exists():
            return given
        return Path(self.source).parent / given

    def with_overrides(self, **run_fields: Any) -> Scenario:
        """A copy with [run] fields replaced (command-line flags win over the file)."""
        given = {k: v for k, v in run_fields.items() if v is not None}
        if not given:
            return self
        run = dataclasses.replace(self.run, **given)
        faults = parse_faults(self.raw_faults, self.source, seed=run.seed)
        return dataclasses.replace(self, run=run, faults=faults)

    def to_dict(self) -> dict[str, Any]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        out["faults"] = self.raw_faults
        out["source"] = self.source
        return out


_SECTIONS = {
    "run": RunSection, "audio": AudioSection, "pacing": PacingSection, "turns": TurnsSection,
    "protocol": ProtocolSection, "keepalive": KeepaliveSection, "reconnect": Backoff,
    "server": ServerSection,
}


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    doc = load_toml(path)
    source = str(path)
    unknown = set(doc) - set(_SECTIONS) - {"faults"}
    if unknown:
        raise ConfigError(source, sorted(unknown)[0], "unknown section; known sections: "
                          + ", ".join([*_SECTIONS, "faults"]))
    sections = {name: read_section(cls, doc.get(name), source, name)
                for name, cls in _SECTIONS.items()}
    raw_faults = doc.get("faults") or {}
    faults = parse_faults(raw_faults, source, seed=sections["run"].seed)
    return Scenario(source=source, faults=faults, raw_faults=raw_faults, **sections)
