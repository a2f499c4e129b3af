"""The image and the Kubernetes manifests agree with each other and with the CLI: what a pod runs
parses as `rtsoak` arguments, names files the Dockerfile copies, and writes where the merge Job
reads. No container engine or cluster needed; kubernetes-validate runs here when installed."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from harness.cli import _parser, _shard
from harness.config.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def _resources(kind: str) -> list[dict]:
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc for doc in docs if doc["kind"] == kind]


def _job(name: str) -> dict:
    (job,) = [job for job in _resources("Job") if job["metadata"]["name"] == name]
    return job


def _container(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def _instructions(name: str) -> list[str]:
    """The arguments of every Dockerfile instruction NAME, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"(?m)^{name}\s+(.*)$", joined)]


def _final_stage() -> str:
    return re.sub(r"\\\n\s*", " ", DOCKERFILE).rsplit("\nFROM ", 1)[1]


def _workdir() -> Path:
    return Path(re.findall(r"(?m)^WORKDIR\s+(\S+)", _final_stage())[-1])


def _copied_into_image() -> dict[Path, Path]:
    """Image path -> repository path, for the final stage's COPY lines from the build context."""
    copies = {}
    workdir = _workdir()
    for line in re.findall(r"(?m)^COPY\s+(.*)$", _final_stage()):
        if "--from=" in line:
            continue
        *sources, dest = line.split()
        for source in sources:
            copies[workdir / dest] = ROOT / source
    return copies


def _in_image(path: str) -> Path | None:
    """The repository file an image path (absolute or relative to WORKDIR) comes from."""
    target = _workdir() / path
    for image_dir, repo_dir in _copied_into_image().items():
        if target == image_dir or image_dir in target.parents:
            return repo_dir / target.relative_to(image_dir)
    return None


def test_the_image_runs_rtsoak_as_its_entrypoint_as_a_non_root_user() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "rtsoak" in scripts
    assert [json.loads(e) for e in _instructions("ENTRYPOINT")] == [["rtsoak"]]
    (user,) = _instructions("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", DOCKERFILE)  # no test extras
    assert "[test]" not in DOCKERFILE


def test_the_image_copies_what_a_run_reads_and_the_context_lets_it_through() -> None:
    copied = _copied_into_image()
    for repo_path in copied.values():
        assert repo_path.exists(), f"Dockerfile copies {repo_path}, which is not in the repo"
    assert ROOT / "scenarios" in copied.values()
    assert ROOT / "fixtures" / "audio" in copied.values()
    # .dockerignore is an allow-list: everything out, then each source the build copies back in
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for line in _instructions("COPY"):
        if "--from=" not in line:
            assert set(line.split()[:-1]) <= allowed, line
    assert not allowed & {".venv", ".git", "reports", "runs", "tests", "bench"}


def test_the_soak_job_runs_the_image_with_no_install_at_pod_start() -> None:
    job = _job("rtsoak-soak")
    container = _container(job)
    assert "command" not in container, "the image's ENTRYPOINT (rtsoak) must run"
    words = " ".join([*container.get("command", []), *container["args"]])
    for installer in ("apt-get", "pip ", "make ", "venv"):
        assert installer not in words
    assert not container["image"].startswith("python:")
    pod = job["spec"]["template"]["spec"]
    assert not any("source" in v["name"] or v["name"] == "src" for v in pod["volumes"])


def test_every_shard_parses_as_an_rtsoak_run_of_its_own_slice() -> None:
    job = _job("rtsoak-soak")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    n = spec["completions"]
    assert spec["parallelism"] == n
    container = _container(job)
    slices = set()
    for k in range(n):
        env = {**_env(container), "JOB_COMPLETION_INDEX": str(k)}
        args = _parser().parse_args([_expand(a, env) for a in container["args"]])
        assert args.command == "run"
        assert args.no_report  # the merge Job writes the one report
        slices.add(_shard(args.shard))
    assert slices == {(k, n) for k in range(n)}


def test_the_scenario_and_its_audio_are_in_the_image_where_the_run_looks() -> None:
    container = _container(_job("rtsoak-soak"))
    args = _parser().parse_args(
        [_expand(a, {**_env(container), "JOB_COMPLETION_INDEX": "0"}) for a in container["args"]]
    )
    repo_scenario = _in_image(str(args.scenario))
    assert repo_scenario is not None and repo_scenario.is_file(), args.scenario
    scenario = load_scenario(repo_scenario)
    # the run resolves [audio] dir from its working directory: the image's WORKDIR
    audio = _in_image(scenario.audio.dir)
    assert audio is not None and any(audio.glob("*.wav")), scenario.audio.dir
    assert "workingDir" not in container


def test_the_merge_job_reads_exactly_the_shards_the_soak_job_writes() -> None:
    soak, merge = _container(_job("rtsoak-soak")), _container(_job("rtsoak-merge"))
    assert _env(soak)["SOAK_ID"] == _env(merge)["SOAK_ID"]
    n = _job("rtsoak-soak")["spec"]["completions"]
    args = _parser().parse_args(
        [_expand(a, {**_env(soak), "JOB_COMPLETION_INDEX": "0"}) for a in soak["args"]]
    )
    scenario = load_scenario(_in_image(str(args.scenario)))
    assert merge["command"] == ["sh", "-c"]
    words = shlex.split(merge["args"][0].replace("${SOAK_ID}", _env(merge)["SOAK_ID"]))
    assert words[:3] == ["exec", "rtsoak", "report"]
    pattern = words[3]
    # the run directories the shards make: NAME-shardKofN-<UTC stamp> under --out
    for k in range(n):
        made = args.out / f"{scenario.run.name}-shard{k}of{n}-20261206T180000Z"
        assert fnmatch.fnmatch(str(made), pattern), (made, pattern)
    assert not fnmatch.fnmatch(str(args.out / f"{scenario.run.name}-shard0of{n + 1}-x"), pattern)
    merged = _parser().parse_args(["report", "RUN", *words[4:]])
    assert merged.out.parent == args.out


def test_every_pod_runs_the_same_image_as_the_dockerfiles_user() -> None:
    uid = int(_instructions("USER")[0].split(":")[0])
    default_image = re.search(r"(?m)^IMAGE \?= (\S+)$", MAKEFILE).group(1)
    pods = [job["spec"]["template"]["spec"] for job in _resources("Job")]
    pods += [pod["spec"] for pod in _resources("Pod")]
    assert len(pods) >= 3
    assert "-t $(IMAGE):dev" in MAKEFILE  # `make image` tags IMAGE:dev beside IMAGE:TAG
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        for container in pod["containers"]:
            assert container["image"] == f"{default_image}:dev"


def test_soak_pods_get_whole_cores_with_requests_equal_to_limits() -> None:
    resources = _container(_job("rtsoak-soak"))["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS, no CFS surprises
    assert str(resources["limits"]["cpu"]).isdigit()
    assert set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly_against_the_stated_kubernetes_version(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = re.search(r"(?m)^K8S_VERSION \?= (\S+)$", MAKEFILE).group(1)
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    job = _job("rtsoak-soak")
    job["spec"]["backofLimit"] = job["spec"].pop("backoffLimit")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.33.0", strict=True)
