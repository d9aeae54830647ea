"""Static checks of docker/Dockerfile and docker/compose.yaml (no Docker engine needed).

Every path they copy or mount exists, every ``recs``/``airflow``/``spark-class`` command
they run is real, and every ``RECS_*`` variable they set is a settings field.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from core import settings as settings_mod
from core.settings import PROJECT_ROOT

DOCKER_DIR = PROJECT_ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE = DOCKER_DIR / "compose.yaml"
VENV_BIN = Path(sys.executable).parent
SHELL_SPLIT = re.compile(r"&&|\|\||;|\|")


# ---------------------------------------------------------------- parsing helpers


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def exec_or_shell(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/RUN argument: JSON exec form or shell form."""
    if args.startswith("["):
        return json.loads(args)
    return ["sh", "-c", args]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_commands() -> dict[str, list[str]]:
    out = {}
    for name, svc in compose()["services"].items():
        cmd = svc.get("command")
        if cmd is None:
            continue
        out[name] = cmd if isinstance(cmd, list) else ["sh", "-c", cmd]
    return out


def invocations(argv: list[str]) -> list[list[str]]:
    """Simple commands inside an argv, looking through ``sh -c`` scripts."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        parts = SHELL_SPLIT.split(argv[2])
        return [shlex.split(p) for p in parts if p.strip()]
    return [argv]


def all_invocations() -> list[list[str]]:
    found = []
    for argv in compose_commands().values():
        found += invocations(argv)
    for word, args in dockerfile_instructions():
        if word in ("CMD", "ENTRYPOINT"):
            found += invocations(exec_or_shell(args))
    return found


def commands_of(program: str) -> list[list[str]]:
    return [inv for inv in all_invocations() if inv and Path(inv[0]).name == program]


def subcommand_path(argv: list[str]) -> list[str]:
    """Leading positional words after the program: ``airflow db migrate -x`` -> [db, migrate]."""
    path = []
    for word in argv[1:]:
        if word.startswith("-"):
            break
        path.append(word)
    return path


def compose_environments() -> dict[str, dict[str, str]]:
    out = {}
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        out[name] = {k: str(v) for k, v in env.items()}
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, args in dockerfile_instructions():
        if word == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


# ---------------------------------------------------------------- tests: paths


def test_dockerfile_copies_only_existing_project_paths():
    copies = [args for word, args in dockerfile_instructions() if word in ("COPY", "ADD")]
    assert copies, "Dockerfile copies nothing"
    for args in copies:
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        words = [w for w in words if not w.startswith("--")]
        assert len(words) >= 2, f"COPY without source and destination: {args}"
        for src in words[:-1]:
            matches = glob.glob(str(PROJECT_ROOT / src))
            assert matches, f"Dockerfile copies {src!r}, which is not in the repository"
    # The project is copied piecewise, never as a whole (that would ship .venv and var).
    assert not any(shlex.split(a)[0] in (".", "./") for a in copies)


def test_dockerfile_installs_the_project_and_runs_the_reader():
    instr = dockerfile_instructions()
    assert instr[0] == ("FROM", "python:3.11-slim-bookworm")
    runs = " ".join(args for word, args in instr if word == "RUN")
    for pkg in ("openjdk-17-jre-headless", "libopenblas0-pthread", "procps"):
        assert pkg in runs
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in runs
    assert "pip install --no-deps ." in runs
    users = [args for word, args in instr if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    cmd = [exec_or_shell(args) for word, args in instr if word == "CMD"][-1]
    assert cmd == ["gunicorn", "-c", "serve/gunicorn.conf.py", "--bind", "0.0.0.0:8000",
                   "serve.app:create_app()"]


def test_gunicorn_app_path_names_a_real_module():
    cmd = [exec_or_shell(args) for word, args in dockerfile_instructions() if word == "CMD"][-1]
    target = cmd[-1]
    m = re.fullmatch(r"([\w.]+):(\w+)(\(.*\))?", target)
    assert m, f"not a gunicorn app path: {target!r}"
    module, func = m.group(1), m.group(2)
    path = PROJECT_ROOT / (module.replace(".", "/") + ".py")
    assert (module, func) == ("serve.app", "create_app")
    assert path.is_file(), f"gunicorn loads {module}, but {path} does not exist"
    assert re.search(rf"^def {func}\(", path.read_text(), re.M), f"{path} has no {func}()"


def test_compose_build_and_mounts_point_into_the_repository():
    doc = compose()
    for name, svc in doc["services"].items():
        build = svc.get("build")
        if build:
            context = (DOCKER_DIR / build["context"]).resolve()
            assert context == PROJECT_ROOT, f"{name}: build context {context}"
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if source.startswith((".", "/", "~")):  # a bind mount from the project
                path = (DOCKER_DIR / source).resolve()
                assert path.exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in (doc.get("volumes") or {}), f"{name}: undeclared volume {source}"
        for dep in svc.get("depends_on", []):
            assert dep in doc["services"], f"{name} depends on unknown service {dep}"


def test_compose_services_and_settings():
    services = compose()["services"]
    assert {
        "postgres",
        "db-init",
        "airflow-scheduler",
        "airflow-api-server",
        "airflow-dag-processor",
        "spark-master",
        "spark-worker",
        "reader",
    } <= set(services)
    assert services["postgres"]["image"] == "postgres:15"
    assert "healthcheck" in services["postgres"]
    assert "command" not in services["reader"]  # the image's gunicorn CMD
    env = compose_environments()["airflow-scheduler"]
    assert env["RECS_DATABASE_URL"] == "postgresql://recs:recs@postgres:5432/recs"
    assert env["RECS_SPARK_MASTER"] == "spark://spark-master:7077"
    assert env["RECS_LAKE_ROOT"] == "/data/lake"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/app/dags"


# ---------------------------------------------------------------- tests: settings


def test_every_recs_variable_is_a_settings_field():
    fields = {f.name for f in dataclasses.fields(settings_mod.Settings)}
    sources = {"Dockerfile": dockerfile_env(), **compose_environments()}
    seen = 0
    for where, env in sources.items():
        recs_env = {k: v for k, v in env.items() if k.startswith(settings_mod.PREFIX)}
        for var in recs_env:
            field = var[len(settings_mod.PREFIX) :].lower()
            assert field in fields, f"{where} sets {var}, but Settings has no field {field!r}"
            seen += 1
        settings_mod.load(env=recs_env)  # the values themselves pass validation
    assert seen, "no RECS_* variable found"


# ---------------------------------------------------------------- tests: commands


def test_recs_subcommands_exist():
    invs = commands_of("recs")
    assert invs, "compose runs no recs command"
    if not (PROJECT_ROOT / "cli" / "main.py").exists():
        pytest.skip("cli/main.py not written yet: recs subcommands cannot be checked")
    from cli.main import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subparsers, "build_parser() has no subcommands"
    known = set().union(*(a.choices for a in subparsers))
    for inv in invs:
        path = subcommand_path(inv)
        assert path, f"recs run without a subcommand: {inv}"
        assert path[0] in known, f"`recs {path[0]}` is not a subcommand ({sorted(known)})"


@pytest.mark.airflow
def test_airflow_subcommands_exist(tmp_path):
    paths = sorted({tuple(subcommand_path(inv)) for inv in commands_of("airflow")})
    assert {("scheduler",), ("api-server",), ("dag-processor",)} <= set(paths)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    for path in paths:
        try:
            done = subprocess.run(
                [str(VENV_BIN / "airflow"), *path, "--help"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"`airflow {' '.join(path)} --help` took over 60 s")
        assert done.returncode == 0, (
            f"`airflow {' '.join(path)}` is not an Airflow command:\n{done.stderr[-2000:]}"
        )


@pytest.mark.airflow
def test_spark_connection_uri_resolves_to_the_master(tmp_path):
    uri = compose_environments()["airflow-scheduler"]["AIRFLOW_CONN_SPARK_DEFAULT"]
    code = (
        "from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook\n"
        "import json; c = SparkSubmitHook(conn_id='spark_default')._connection\n"
        "print(json.dumps([c['master'], c['deploy_mode']]))"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONN_SPARK_DEFAULT": uri}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.skip("importing the Spark provider took over 60 s")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        "spark://spark-master:7077",
        "client",
    ]


def test_spark_class_and_deploy_classes_exist():
    import pyspark

    pyspark_dir = Path(pyspark.__file__).parent
    spark_class = pyspark_dir / "bin" / "spark-class"
    assert spark_class.is_file() and os.access(spark_class, os.X_OK)
    # pip also puts it on PATH (the image runs it by name).
    assert (VENV_BIN / "spark-class").exists()
    invs = commands_of("spark-class")
    classes = {inv[1] for inv in invs}
    assert classes == {
        "org.apache.spark.deploy.master.Master",
        "org.apache.spark.deploy.worker.Worker",
    }
    core_jars = list((pyspark_dir / "jars").glob("spark-core_*.jar"))
    assert core_jars, "pyspark ships no spark-core jar"
    with zipfile.ZipFile(core_jars[0]) as jar:
        names = set(jar.namelist())
    for cls in classes:
        assert cls.replace(".", "/") + ".class" in names, f"{cls} not in {core_jars[0].name}"
    worker = next(inv for inv in invs if inv[1].endswith("Worker"))
    assert worker[2] == compose_environments()["spark-worker"]["RECS_SPARK_MASTER"]


def test_executables_run_by_the_services_are_installed():
    for inv in all_invocations():
        program = inv[0]
        if program in ("sh", "bash"):
            continue
        assert (VENV_BIN / program).exists(), f"{program} is not installed in the venv"
