"""The wheel the image is made of, built and installed as the Dockerfile does, run from outside the source tree.

No Docker engine runs here or in CI, so the image is never built in tests (`make lint` lints the Dockerfile). What can
go wrong between this checkout and the image is the packaging: a module, the packaged settings.toml (a link to
../settings.toml in the tree), py.typed or the proto stubs missing from the wheel; an extra the image installs that
does not resolve; an import that works only because the repository is on sys.path. So this test

- makes the build context the builder stage sees: the sources its COPY instructions name, filtered by .dockerignore;
- runs the builder's own `pip wheel` command there (read from the Dockerfile; only `--no-cache-dir` is dropped, so
  that pip's cache keeps this fast, and /wheels becomes a temporary directory);
- installs the wheel with the extras the runtime stage installs (read from the Dockerfile too) into a new virtual
  environment in a temporary directory, taking the dependencies from the package index through pip's cache;
- runs `rxstreamer --version`, the broker (its metrics endpoint on through the image's variable, answering the
  image's HEALTHCHECK command), a whole stream of a copy of test-data/metrics.csv and `tail` from that environment,
  with the working directory outside the repository and no PYTHONPATH.

About 10 s with pip's cache warm; the first run on a machine downloads the dependencies (grpcio is the largest).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT, child_env, event, free_port, json_lines, watch

# The fixture's pip runs count against the first test's time: more than the default, for a cold pip cache.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PIP_TIMEOUT = 180.0
RUN_TIMEOUT = 60.0


# --- the Dockerfile, read ----------------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions as (INSTRUCTION, arguments), continuation lines joined and comments dropped; a stage
    is named by its `AS` name, or by its position ("1", "2", ...) when it has none."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    logical = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            words = arguments.split()
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else str(len(stages) + 1)
            current = stages.setdefault(name, [])
        current.append((instruction.upper(), arguments.strip()))
    return stages


def builder_copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """The builder's COPY instructions from the build context: (sources, destination)."""
    copies = []
    for instruction, arguments in stage:
        if instruction == "COPY":
            words = shlex.split(arguments)
            assert not any(word.startswith("--from") for word in words), "the builder copies only from the context"
            copies.append((words[:-1], words[-1]))
    return copies


def builder_wheel_command(stage: list[tuple[str, str]]) -> list[str]:
    """The builder's `pip wheel ... .` command, as words."""
    commands = [shlex.split(arguments) for instruction, arguments in stage if instruction == "RUN"]
    wheel = [words for words in commands if words[:2] == ["pip", "wheel"]]
    assert len(wheel) == 1, f"the builder stage should run one `pip wheel` command: {commands}"
    assert wheel[0][-1] == ".", f"the builder builds the project in its working directory: {wheel[0]}"
    return wheel[0]


def healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    """The runtime stage's HEALTHCHECK command (exec form)."""
    checks = [arguments for instruction, arguments in stage if instruction == "HEALTHCHECK"]
    assert len(checks) == 1, f"the runtime stage should have one HEALTHCHECK: {checks}"
    _, _, command = checks[0].partition(" CMD ")
    words: list[str] = json.loads(command)
    return words


def image_environment(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The variables the runtime stage's ENV instructions set (KEY=VALUE form)."""
    variables: dict[str, str] = {}
    for instruction, arguments in stage:
        if instruction == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                variables[name] = value
    return variables


def runtime_extras(stage: list[tuple[str, str]]) -> str:
    """The extras the runtime stage installs the wheel with, e.g. ``broker,nats``."""
    installs = [arguments for instruction, arguments in stage if instruction == "RUN" and "pip install" in arguments]
    assert len(installs) == 1, f"the runtime stage should install the wheel once: {installs}"
    match = re.search(r'\[([A-Za-z0-9_,-]+)\]"?(?:\s|$)', installs[0])
    assert match, f"no extras found in {installs[0]}"
    return match.group(1)


# --- the build context: what COPY sees after .dockerignore ------------------------------------------------------


def _segment_regex(segment: str) -> str:
    """One path segment of a Go filepath.Match pattern as a regular expression (no `/` inside a segment)."""
    out, index = "", 0
    while index < len(segment):
        char = segment[index]
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = segment.index("]", index)
            body = segment[index + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            index = end
        elif char == "\\" and index + 1 < len(segment):
            index += 1
            out += re.escape(segment[index])
        else:
            out += re.escape(char)
        index += 1
    return out


def dockerignore_rules(text: str) -> list[tuple[re.Pattern[str], bool]]:
    """.dockerignore's patterns, in order, as (regex, is an exception `!pattern`): Docker's rules, where `**`
    matches any number of directories and a pattern that matches a directory matches everything in it."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).strip("/")
        parts = pattern.split("/")
        regex = ""
        for position, part in enumerate(parts):
            last = position == len(parts) - 1
            if part == "**":
                regex += ".*" if last else "(?:[^/]+/)*"
            else:
                regex += _segment_regex(part) + ("" if last else "/")
        rules.append((re.compile(regex + r"\Z"), negated))
    return rules


def ignored(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether Docker leaves this path out of the build context: the last rule matching it, or a parent, decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: length + 1]) for length in range(len(parts))]
    excluded = False
    for regex, negated in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def copy_into_context(source: str, destination: Path, rules: list[tuple[re.Pattern[str], bool]]) -> None:
    """COPY ``source`` (relative to the repository) to ``destination``, skipping what .dockerignore leaves out and
    keeping links as links, as Docker does."""
    root = REPO_ROOT / source.rstrip("/")
    relative = root.relative_to(REPO_ROOT).as_posix()
    assert root.exists(), f"COPY {source}: no such file"
    assert not ignored(relative, rules), f"COPY {source}: .dockerignore leaves it out of the build context"
    if not root.is_dir():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root, destination, follow_symlinks=False)
        return
    for path in sorted(root.rglob("*")):
        inside = path.relative_to(REPO_ROOT).as_posix()
        if ignored(inside, rules) or (path.is_dir() and not path.is_symlink()):
            continue
        target = destination / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=False)


def build_context(stage: list[tuple[str, str]], workdir: Path) -> None:
    """The builder's working directory after its COPY instructions (destinations relative to its WORKDIR): a file
    goes into a destination ending in `/` under its own name, a directory's contents go into the destination."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for sources, destination in builder_copies(stage):
        for source in sources:
            into_directory = destination.endswith("/") and not (REPO_ROOT / source).is_dir()
            target = workdir / destination / Path(source).name if into_directory else workdir / destination
            copy_into_context(source, target, rules)


# --- the installed wheel -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # outside the repository: where the commands run
    env: dict[str, str]

    @property
    def rxstreamer(self) -> str:
        return str(self.venv / "bin" / "rxstreamer")

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.rxstreamer, *args], cwd=self.workdir, env={**self.env, **(env or {})}, capture_output=True,
            text=True, timeout=RUN_TIMEOUT, check=False,
        )  # fmt: skip


def _pip(*args: str, cwd: Path) -> None:
    # PYTHONPATH naming this checkout would make pip take the source tree's egg-info for an installed rxstreamer.
    unwanted = ("PIP_NO_CACHE_DIR", "PIP_REQUIRE_VIRTUALENV", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {key: value for key, value in child_env().items() if key not in unwanted}
    finished = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, f"pip {' '.join(args)} failed:\n{finished.stdout}\n{finished.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built as the Dockerfile's builder stage builds it, installed as its runtime stage installs it."""
    root = tmp_path_factory.mktemp("wheel-install")
    assert not root.resolve().is_relative_to(REPO_ROOT.resolve())
    stages = dockerfile_stages(DOCKERFILE.read_text())
    builder, runtime = stages["builder"], list(stages.values())[-1]
    source = root / "src"  # the builder's WORKDIR
    build_context(builder, source)
    command = builder_wheel_command(builder)
    wheels = root / "wheels"
    arguments = [word for word in command[1:] if word != "--no-cache-dir"]
    arguments = [str(wheels) if word == "/wheels" else word for word in arguments]
    assert str(wheels) in arguments, f"the builder should write the wheel to /wheels: {command}"
    _pip(*arguments, cwd=source)
    built = sorted(wheels.glob("rxstreamer-*.whl"))
    assert len(built) == 1, f"expected one wheel, found {[path.name for path in wheels.iterdir()]}"

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    _pip("--python", str(venv / "bin" / "python"), "install", f"{built[0]}[{runtime_extras(runtime)}]", cwd=root)

    workdir = root / "work"
    workdir.mkdir()
    env = {key: value for key, value in child_env().items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return Installed(wheel=built[0], venv=venv, workdir=workdir, env=env)


# --- the tests ---------------------------------------------------------------------------------------------------


def test_the_dockerfile_is_read_as_expected() -> None:
    """The parts of the Dockerfile this test relies on are where it looks for them."""
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert list(stages) == ["builder", "2"]
    assert builder_wheel_command(stages["builder"]) == [
        "pip", "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir", "/wheels", ".",
    ]  # fmt: skip
    assert runtime_extras(stages["2"]) == "broker,nats"
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"broker", "nats"} <= set(extras)


def test_dockerignore_keeps_the_context_to_the_wheels_sources() -> None:
    """What .dockerignore lets through: the package and the three files beside it, never caches or the venv."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for kept in ("pyproject.toml", "README.md", "settings.toml", "rxstreamer", "rxstreamer/cli.py",
                 "rxstreamer/settings.toml", "rxstreamer/proto/mq_pb2.pyi"):  # fmt: skip
        assert not ignored(kept, rules), kept
    for left_out in (".venv", ".venv/bin/python", ".git/config", "tests/test_cli.py", "test-data/metrics.csv",
                     "rxstreamer/__pycache__/cli.cpython-311.pyc", "rxstreamer/broker/__pycache__",
                     "rxstreamer/x.pyc", "rxstreamer.egg-info/PKG-INFO", "build/lib/rxstreamer/cli.py",
                     "deploy/base/broker/statefulset.yaml", "Dockerfile"):  # fmt: skip
        assert ignored(left_out, rules), left_out


def test_the_wheel_holds_every_module_and_the_package_data(installed: Installed) -> None:
    """settings.toml (the real file, not the link), py.typed, the proto stubs and every module are in the wheel."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        assert wheel.read("rxstreamer/settings.toml") == (REPO_ROOT / "settings.toml").read_bytes()
    assert "rxstreamer/py.typed" in names
    stubs = {f"rxstreamer/proto/{path.name}" for path in (REPO_ROOT / "rxstreamer" / "proto").glob("*.pyi")}
    assert stubs
    assert stubs <= names
    modules = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "rxstreamer").rglob("*.py")}
    assert modules - names == set()
    assert not [name for name in names if "__pycache__" in name or name.startswith(("tests/", "bench/"))]


def test_the_installed_program_runs_from_its_own_environment(installed: Installed) -> None:
    """`rxstreamer --version` answers with pyproject's version, and the package is imported from the new
    environment, with no trace of the repository on sys.path."""
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    finished = installed.run("--version")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"rxstreamer {version}"
    probe = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import sys, rxstreamer; print(rxstreamer.__file__); "
         "print('\\n'.join(sys.path))"],
        cwd=installed.workdir, env=installed.env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True,
    )  # fmt: skip
    module, *path = probe.stdout.splitlines()
    assert Path(module).resolve().is_relative_to(installed.venv.resolve())
    repo = str(REPO_ROOT.resolve())
    assert not [entry for entry in path if entry and str(Path(entry).resolve()).startswith(repo)]


def test_the_installed_broker_and_streamer_stream_the_whole_file(installed: Installed) -> None:
    """`rxstreamer mq` with a durable data directory and its metrics endpoint on through the image's variable (as
    the StatefulSet runs it), answering the image's HEALTHCHECK; then `rxstreamer run` with its endpoint on too, on
    a copy of the test data to its end (exit 0, 960 rows); `tail` reads them back; the broker stops cleanly."""
    runtime = list(dockerfile_stages(DOCKERFILE.read_text()).values())[-1]
    image_variable = "RXSTREAMER_OBSERVABILITY__LISTEN"
    assert image_environment(runtime)[image_variable] == "0.0.0.0:9464"
    metrics = installed.workdir / "metrics.csv"
    shutil.copyfile(REPO_ROOT / "test-data" / "metrics.csv", metrics)
    broker_env = {**installed.env, image_variable: f"127.0.0.1:{free_port()}"}
    broker_command = [installed.rxstreamer, "mq", "--listen", "127.0.0.1:0", "--log-format", "json",
                      "--data-dir", str(installed.workdir / "broker"), "--fsync", "always"]  # fmt: skip
    pipe = subprocess.PIPE
    process = subprocess.Popen(
        broker_command, cwd=installed.workdir, env=broker_env, stdout=pipe, stderr=pipe, text=True
    )
    broker = watch(process)
    try:
        try:
            address = f"127.0.0.1:{broker.wait_for_event('broker.started')['port']}"
        except AssertionError as error:
            broker.finish(timeout=20)
            raise AssertionError(f"{error}\n{''.join(broker.stderr_lines)}") from None
        command = healthcheck_command(runtime)
        assert command[0] == "python"
        healthcheck = subprocess.run(
            [str(installed.venv / "bin" / "python"), *command[1:]],
            cwd=installed.workdir, env=broker_env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
        )  # fmt: skip
        assert healthcheck.returncode == 0, healthcheck.stderr
        streamed = installed.run(
            "run", "--metrics-path", str(metrics), "--mq-address", address, "--interval", "0s", "--log-format", "json",
            env={image_variable: "127.0.0.1:0"},
        )  # fmt: skip
        assert streamed.returncode == 0, streamed.stdout + streamed.stderr
        lines = json_lines(streamed.stdout)
        assert event(lines, "metrics.started")
        stopped = event(lines, "streamer.stopped")
        assert (stopped["reason"], stopped["rows_read"], stopped["rows_published"]) == ("completed", 960, 960)
        tailed = installed.run("tail", "--mq-address", address, "--from-beginning", "--count", "960")
        assert tailed.returncode == 0, tailed.stderr
        assert len(json_lines(tailed.stdout)) == 960
    finally:
        if broker.process.poll() is None:
            broker.process.terminate()
        finished = broker.finish(timeout=20)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "broker.stopped" in finished.stdout
