"""Docker files checked without an engine: services, volumes, ports, paths, users, commands."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
SERVING_STAGES = ("serving-build", "serving")
HEAVY = ("pyspark", "openjdk", "java", "[pipeline]", "dvc", "onnxmltools")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named build stage."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            assert match, f"unnamed stage: FROM {args}"
            current = stages.setdefault(match.group(1), [])
            current.append((keyword, args))
        elif current is not None:
            current.append((keyword, args))
    return stages


def _exec_form(args: str) -> list[str]:
    return yaml.safe_load(args) if args.startswith("[") else shlex.split(args)


def _module_exists(command: list[str]) -> bool:
    if "-m" not in command:
        return True
    module = command[command.index("-m") + 1]
    base = REPO / Path(*module.split("."))
    return (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()


def test_compose_has_the_three_services_wired_together() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"mlflow", "pipeline", "api", "spark-master", "spark-worker"}
    assert "8000:8000" in services["api"]["ports"]
    assert "5000:5000" in services["mlflow"]["ports"]
    for name in ("api", "pipeline"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["pipeline"]["restart"] == "no"  # one shot
    assert services["pipeline"]["command"][-3:] == ["src.supervisor", "run", "all"]
    assert "healthcheck" in services["mlflow"]


def test_the_pipeline_runs_on_the_spark_services() -> None:
    services = _compose()["services"]
    master, worker, pipeline = (services[n] for n in ("spark-master", "spark-worker", "pipeline"))
    for daemon in (master, worker):
        assert daemon["build"]["target"] == "pipeline"  # Java + pyspark
        assert daemon["command"][:3] == ["python", "-m", "scripts.cluster"]
    assert master["command"][3:] == ["master", "--host", master["hostname"]]
    url = f"spark://{master['hostname']}:7077"
    assert worker["command"][3:] == ["worker", url]
    env = pipeline["environment"]
    assert env["SPARK_MASTER"] == url
    # Executors connect back to the driver by the pipeline container's name.
    assert env["SPARK_DRIVER_HOST"] == pipeline["hostname"]
    assert env["SPARK_DRIVER_BIND_ADDRESS"] == "0.0.0.0"
    assert pipeline["depends_on"]["spark-master"]["condition"] == "service_healthy"
    assert "spark-worker" in pipeline["depends_on"]
    # Executors read and write the driver's files: same volumes at the same paths.
    shared = {m for m in pipeline["volumes"] if not m.startswith("pipeline-reports")}
    assert shared <= set(worker["volumes"])
    assert env["TMPDIR"] == worker["environment"]["TMPDIR"]
    assert any(m.endswith(":" + env["TMPDIR"]) for m in shared)
    assert env["MLFLOW_DFS_TMP"].startswith(env["TMPDIR"] + "/")


def test_volumes_are_declared_and_persist_the_registry() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            assert not source.startswith((".", "/")), f"{mount}: use a named volume"
            used.add(source)
            if source.startswith("mlflow"):
                assert target.startswith("/mlflow/")
    assert used == declared
    mlflow_mounts = {m.split(":")[1] for m in compose["services"]["mlflow"]["volumes"]}
    assert mlflow_mounts == {"/mlflow/backend", "/mlflow/artifacts"}
    cmd = " ".join(
        args for k, args in _stages()["mlflow"] if k == "CMD"
    )
    assert "sqlite:////mlflow/backend/" in cmd and "/mlflow/artifacts" in cmd


def test_build_contexts_dockerfiles_and_targets_exist() -> None:
    stages = _stages()
    for name, service in _compose()["services"].items():
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO, name
        assert (context / build["dockerfile"]).is_file(), name
        assert build["target"] in stages, (name, build["target"])


def test_every_copied_path_exists_in_the_repo() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/*") for line in ignore if line.startswith("!")}
    for stage, instructions in _stages().items():
        for keyword, args in instructions:
            if keyword != "COPY" or "--from=" in args:
                continue
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), f"{stage}: COPY {source} does not exist"
                assert source.rstrip("/") in included, f"{source} is excluded by the dockerignore"


def test_serving_image_has_no_jvm_or_pyspark() -> None:
    stages = _stages()
    for stage in SERVING_STAGES:
        for keyword, args in stages[stage]:
            if keyword == "RUN":
                install = args.split("&& !")[0]  # the check that pyspark is absent may name it
                assert not any(word in install for word in HEAVY), f"{stage}: RUN {args}"
    assert ("FROM", "base AS serving") in stages["serving"]
    assert "base" in stages and not any(k == "RUN" and "apt-get" in a for k, a in stages["base"])
    copies = [a for k, a in stages["serving"] if k == "COPY"]
    assert any("--from=serving-build" in a for a in copies)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    assert "pyspark" not in core and "dvc" not in core and '"mlflow=' not in core
    assert any(d.startswith("pyspark==") for d in project["optional-dependencies"]["pipeline"])


def test_pins_match_the_lock() -> None:
    lock = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version.strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    pins = [*project["dependencies"], *(pin for extra in extras for pin in extra)]
    for pin in pins:
        name, version = pin.split("==")
        key = name.lower().replace("_", "-")
        if key in lock:
            assert lock[key] == version, pin
    assert 'install --quiet -c requirements.lock -e ".[pipeline,dev]"' in (
        REPO / "scripts" / "setup.sh"
    ).read_text()


def test_images_run_as_non_root() -> None:
    stages = _stages()
    for stage in ("serving", "pipeline", "mlflow"):
        users = [a for k, a in stages[stage] if k == "USER"]
        assert users and users[-1] not in ("root", "0"), stage


def test_commands_name_modules_that_exist() -> None:
    stages = _stages()
    for stage in ("serving", "pipeline"):
        (cmd,) = [_exec_form(a) for k, a in stages[stage] if k == "CMD"]
        assert _module_exists(cmd), (stage, cmd)
    serving_cmd = next(_exec_form(a) for k, a in stages["serving"] if k == "CMD")
    assert serving_cmd[:3] == ["python", "-m", "src.serving"] and "0.0.0.0" in serving_cmd
    for name, service in _compose()["services"].items():
        if "command" in service:
            assert _module_exists(service["command"]), (name, service["command"])


def test_docker_compose_config_validates() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"docker compose unavailable: {probe.stderr.strip().splitlines()[0][:120]}")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 and "daemon" in done.stderr.lower():
        pytest.skip(f"docker compose config needs an engine here: {done.stderr.strip()[:120]}")
    assert done.returncode == 0, done.stderr
