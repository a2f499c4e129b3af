"""Scenario files: TOML -> a validated, frozen Scenario and its variants.

A scenario's sections configure one experiment; `[[variant]]` blocks (dotted keys override any
field, e.g. `pacing.chunk_ms = 20`) and a `[matrix]` of lists (expanded as a product) turn it
into variants that run side by side on one clock. Errors name file, line, field and fix.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.faults import parse_faults
from harness.config.target import url_key_problem
from harness.config.toml import load_toml
from harness.core.policies import FaultProfile
from harness.core.reconnect import ReconnectPolicy
from harness.core.spec import ConfigError, read_section, spec
from harness.core.timescale import MAX_TIME_SCALE, MIN_TIME_SCALE

__all__ = ["Scenario", "load_scenario", "scenario_from_doc"]

MAX_VARIANTS = 64


@dataclass(frozen=True, slots=True)
class RunSection:
    name: str = "unnamed"
    seed: int = spec(0, lo=0)
    duration: float = spec(60.0, kind="duration", lo=0.001)
    workers: int = spec(1, lo=1, hi=100_000)  # per variant
    ramp_up: float = spec(0.0, kind="duration")
    time_scale: float = spec(1.0, kind="float", lo=MIN_TIME_SCALE, hi=MAX_TIME_SCALE)
    target: str = spec("fake", choices=("fake", "openai", "azure", "url"))


# [run] fields every variant shares: they define the one clock and place all variants run on.
SHARED_RUN_FIELDS = ("name", "seed", "duration", "ramp_up", "time_scale", "target")


@dataclass(frozen=True, slots=True)
class AudioSection:
    dir: str = "fixtures/audio"
    selection: str = spec("random", choices=("random", "sequential"))


@dataclass(frozen=True, slots=True)
class PacingSection:
    """How append frames are spaced: steady, jittered, or in bursts; `speed` > 1 sends faster
    than real time."""

    chunk_ms: int = spec(20, lo=5, hi=2000)
    mode: str = spec("steady", choices=("steady", "jitter", "burst"))
    speed: float = spec(1.0, kind="float", lo=0.01, hi=100.0)
    jitter_ms: float = spec(5.0, lo=0.0, hi=10_000.0)
    burst_frames: int = spec(5, lo=1, hi=10_000)
    burst_every_ms: float = spec(0.0, lo=0.0, hi=600_000.0)  # 0: real time on average


@dataclass(frozen=True, slots=True)
class SilenceSection:
    """What happens between utterances (and in pauses inside them): nothing is sent (`idle`),
    or silence is streamed as digital zero or as noise at `noise_dbfs`."""

    gap: float = spec(1.0, kind="duration")
    gap_max: float = spec(0.0, kind="duration")  # > gap: each gap drawn between gap and gap_max
    fill: str = spec("idle", choices=("idle", "zeros", "noise"))
    noise_dbfs: float = spec(-60.0, lo=-120.0, hi=0.0)
    pause: float = spec(0.0, kind="duration")  # a pause in the middle of each utterance


@dataclass(frozen=True, slots=True)
class TurnsSection:
    """Who decides where an utterance ends: the client's own VAD (clear/commit per utterance,
    `turn_detection: null`, as in the field report) or the server's VAD (never commit)."""

    mode: str = spec("client", choices=("client", "server_vad"))
    transcript_timeout: float = spec(15.0, kind="duration", lo=0.001)


@dataclass(frozen=True, slots=True)
class ProtocolSection:
    dialect: str = spec("ga", choices=("ga", "beta"))
    model: str = "gpt-4o-transcribe"
    language: str = "en"
    prompt: str = ""
    noise_reduction: str = spec("none", choices=("none", "near_field", "far_field"))
    logprobs: bool = False


@dataclass(frozen=True, slots=True)
class KeepaliveSection:
    """WebSocket pings from the client: the only way to notice a half-open connection."""

    ping_interval: float = spec(20.0, kind="duration")  # 0: no pings; the pong is due within half

    @property
    def heartbeat(self) -> float | None:
        """Scenario seconds between pings, or None: no pings."""
        return self.ping_interval if self.ping_interval > 0 else None


@dataclass(frozen=True, slots=True)
class TargetSection:
    """Details of a real target; keys come from the environment, never from here."""

    url: str = ""  # target "url": any ws:// or wss:// URL
    header: str = "Authorization"  # target "url": the header that carries the key
    key_env: str = "OPENAI_API_KEY"
    deployment: str = ""  # azure: the deployment name
    api_version: str = ""  # azure: empty for the GA /openai/v1 path

    def check(self) -> None:
        problem = url_key_problem(self.url, "url")
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True, slots=True)
class ServerSection:
    """Limits of the embedded fake server (service values by default)."""

    max_session: float = spec(3600.0, kind="duration", lo=1.0)
    latency_base: float = spec(0.25, kind="duration")
    latency_per_audio_second: float = spec(0.08, lo=0.0, hi=10.0)


@dataclass(frozen=True, slots=True)
class ThresholdsSection:
    """Pass/fail bounds the report judges each variant by (0 or empty: not checked)."""

    max_drops_per_hour: float = spec(0.0, lo=0.0)
    survival_at: float = spec(0.0, kind="duration")  # with min_survival: S(survival_at) >= ...
    min_survival: float = spec(0.0, lo=0.0, hi=1.0)  # judged on the CI's lower bound
    min_median: float = spec(0.0, kind="duration")
    max_lost_utterances: int = spec(-1, lo=-1)
    max_p99_latency: float = spec(0.0, kind="duration")
    max_recovery: float = spec(0.0, kind="duration")


_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "audio": AudioSection,
    "pacing": PacingSection,
    "silence": SilenceSection,
    "turns": TurnsSection,
    "protocol": ProtocolSection,
    "keepalive": KeepaliveSection,
    "reconnect": ReconnectPolicy,
    "target": TargetSection,
    "server": ServerSection,
    "thresholds": ThresholdsSection,
}
_META = ("faults", "variant", "matrix")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One fully resolved configuration. The scenario as loaded also lists its `variants`
    (at least one); each variant is a Scenario whose `variant` names it."""

    source: str
    variant: str
    run: RunSection
    audio: AudioSection
    pacing: PacingSection
    silence: SilenceSection
    turns: TurnsSection
    protocol: ProtocolSection
    keepalive: KeepaliveSection
    reconnect: ReconnectPolicy
    target: TargetSection
    server: ServerSection
    thresholds: ThresholdsSection
    faults: FaultProfile = field(default_factory=FaultProfile)
    raw_faults: dict[str, Any] = field(default_factory=dict)
    doc: dict[str, Any] = field(default_factory=dict, repr=False)
    variants: tuple[Scenario, ...] = ()

    def audio_dir(self) -> Path:
        """[audio] dir as given if it exists from here, else relative to the scenario file."""
        given = Path(self.audio.dir)
        if given.is_absolute() or given.exists():
            return given
        return Path(self.source).parent / given

    def with_overrides(self, **run_fields: Any) -> Scenario:
        """The scenario again with [run] fields replaced (command-line flags win). A target
        given as a URL (`--target ws://127.0.0.1:PORT/v1/realtime`) is target "url" with
        [target] url set to it."""
        given = {k: v for k, v in run_fields.items() if v is not None}
        if not given:
            return self
        doc = copy.deepcopy(self.doc)
        if "://" in str(given.get("target", "")):
            doc.setdefault("target", {})["url"] = given["target"]
            given["target"] = "url"
        doc.setdefault("run", {}).update(given)
        return scenario_from_doc(doc, self.source)

    def session_update(self) -> dict[str, Any]:
        """The session configuration this scenario's workers send on connect."""
        from harness.core.protocol import session_update

        return session_update(self.protocol, self.turns.mode)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        out.update(source=self.source, variant=self.variant, faults=self.raw_faults)
        if self.variants:
            out["variants"] = [v.variant for v in self.variants]
            out["thresholds_by_variant"] = {
                v.variant: dataclasses.asdict(v.thresholds) for v in self.variants
            }
        return out


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    doc = load_toml(path)
    try:
        return scenario_from_doc(doc, str(path))
    except ConfigError as exc:
        raise _with_line(exc, path) from None


def scenario_from_doc(doc: dict[str, Any], source: str) -> Scenario:
    unknown = sorted(set(doc) - set(_SECTIONS) - set(_META))
    if unknown:
        raise ConfigError(
            source,
            unknown[0],
            "unknown section; known sections: " + ", ".join([*_SECTIONS, *_META]),
        )
    base = _resolve(doc, source, variant="")
    variants = tuple(_resolve(vdoc, source, name) for name, vdoc in _expand(doc, source))
    for v in variants:
        for name in SHARED_RUN_FIELDS:
            if getattr(v.run, name) != getattr(base.run, name):
                raise ConfigError(
                    source,
                    f"variant {v.variant!r}: run.{name}",
                    "variants share the run's clock and target; only run.workers "
                    "may differ between variants",
                )
    return dataclasses.replace(base, variant=base.run.name, variants=variants)


def _resolve(doc: dict[str, Any], source: str, variant: str) -> Scenario:
    where = f"variant {variant!r}: " if variant else ""
    try:
        sections = {
            name: read_section(cls, doc.get(name), source, name) for name, cls in _SECTIONS.items()
        }
        raw_faults = doc.get("faults") or {}
        faults = parse_faults(raw_faults, source, seed=sections["run"].seed)
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(source, where + exc.field, exc.message) from None
    return Scenario(
        source=source,
        variant=variant or sections["run"].name,
        faults=faults,
        raw_faults=raw_faults,
        doc=doc,
        **sections,
    )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _expand(doc: dict[str, Any], source: str) -> list[tuple[str, dict[str, Any]]]:
    """[[variant]] blocks times the [matrix] product, each as a (name, merged doc)."""
    base = {k: v for k, v in doc.items() if k not in ("variant", "matrix")}
    blocks = doc.get("variant") or [{}]
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(source, "variant", "write variants as [[variant]] tables")
    matrix = _flatten(doc.get("matrix") or {})
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                source,
                f"matrix.{key}",
                f"must be a non-empty list of values to try, e.g. {key} = [20, 50, 100]",
            )
    combos = list(itertools.product(*matrix.values())) if matrix else [()]
    if len(blocks) * len(combos) > MAX_VARIANTS:
        raise ConfigError(
            source,
            "matrix",
            f"{len(blocks) * len(combos)} variants; at most "
            f"{MAX_VARIANTS} run side by side; split the scenario",
        )
    out, names = [], set()
    for i, block in enumerate(blocks):
        block = dict(block)
        label = block.pop("name", None)
        if label is not None and not isinstance(label, str):
            raise ConfigError(source, f"variant[{i}].name", "must be a string")
        for combo in combos:
            merged = _merge(base, block)
            parts = [label] if label else []
            for key, value in zip(matrix, combo, strict=True):
                merged = _merge(merged, _nest(key, value))
                parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
            name = ",".join(parts) or (doc.get("run") or {}).get("name", "unnamed")
            if not re.fullmatch(r"[\w.=,:+\- ]+", name) or "/" in name:
                raise ConfigError(
                    source,
                    f"variant[{i}].name",
                    f"{name!r}: use letters, digits and - _ . = , only",
                )
            if name in names:
                raise ConfigError(source, f"variant[{i}].name", f"duplicate variant {name!r}")
            names.add(name)
            out.append((name, merged))
    return out


def _with_line(exc: ConfigError, path: Path) -> ConfigError:
    """Point at the line of the offending key, found by reading the file as text."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return exc
    dotted = exc.field.split(": ")[-1]
    if not dotted:
        return exc
    section, _, key = dotted.rpartition(".")
    table = ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        header = re.match(r"^\[\[?([^\]]+)\]\]?", stripped)
        if header:
            table = header.group(1).strip()
            if table == dotted:
                return ConfigError(f"{path}:{number}", exc.field, exc.message)
            continue
        name = stripped.split("=", 1)[0].strip().strip('"')
        if "=" in stripped and (
            (table == section and name == key)
            or name in (dotted, f"{section}.{key}")
            or (table in ("variant", "matrix") and name.endswith(dotted))
        ):
            return ConfigError(f"{path}:{number}", exc.field, exc.message)
    return exc
