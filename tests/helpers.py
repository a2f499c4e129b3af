"""In-process soaks for tests: what `rtsoak run` does, with the fake server in this process."""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from pathlib import Path

from harness.clock import ScaledClock
from harness.fakeserver.process import server_config_from_doc
from harness.recorder import Recorder
from harness.runner import manifest, run_workers, server_config_doc, write_json
from harness.scenario import Scenario, load_scenario
from harness.target import Target


def vad_off(dialect: str = "ga") -> str:
    """The update a client with its own VAD sends: turn_detection null, in either dialect."""
    if dialect == "beta":
        return json.dumps(
            {"type": "transcription_session.update", "session": {"turn_detection": None}}
        )
    return json.dumps(
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
    )


def scenario_from(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return load_scenario(path)


async def soak(tmp_path: Path, scenario: Scenario, library, fake_server) -> Path:
    """What `rtsoak run` does, with the fake server in this process."""
    run_dir = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    run_dir.mkdir()
    write_json(run_dir / "manifest.json", manifest(scenario, None, datetime.now(UTC).isoformat()))
    clock = ScaledClock(scenario.run.time_scale)
    server_log = Recorder(run_dir / "events-server.arrows")
    config = server_config_from_doc(server_config_doc(scenario), scenario.source, scenario.run.seed)
    server = await fake_server(config, clock, server_log)
    # At 120x a transcript wait is ~100 wall ms; a full collection of the whole pytest process
    # (frames and charts of earlier tests) measured up to 117 ms. Freeze what exists, as
    # design.md advises for real runs, so collections see only the soak's own objects.
    gc.collect()
    gc.freeze()
    try:
        await run_workers(
            scenario,
            clock,
            Target.fake(server.url),
            library,
            run_dir,
            log=lambda *_: None,
            handle_signals=False,
        )
    finally:
        gc.unfreeze()
    server_log.close()
    return run_dir
