"""Static checks of the deployment files (no Docker engine needed): compose files, Dockerfiles, entrypoint,
.env.example and .dockerignore agree with each other and with the code they start."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from retrieval_service.api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILES = {"retrieval": ROOT / "Dockerfile.retrieval", "trainer": ROOT / "Dockerfile.trainer"}
ENTRYPOINT = ROOT / "docker" / "entrypoint-retrieval.sh"
ENV_EXAMPLE = ROOT / ".env.example"
VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?-([^}]*))?\}")
# Variables of the images themselves, not of the project's configuration.
IMAGE_ENV = {"PATH", "PYTHONUNBUFFERED", "DEBIAN_FRONTEND", "PIP_NO_CACHE_DIR",
             "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_ROOT_USER_ACTION", "MPLCONFIGDIR"}


class Tagged:
    """A compose merge tag (``!reset`` / ``!override``) and the value it carries."""

    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value


class ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged(node.tag, value)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _tagged)


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose-style ``${VAR:-default}`` / ``${VAR-default}`` / ``${VAR}`` (environment: empty by default)."""
    env = env or {}
    return VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def untag(value):
    return value.value if isinstance(value, Tagged) else value


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return load_compose(COMPOSE_CPU)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and heredoc bodies skipped."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:  # skip the body up to its terminator
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def settings_env_names() -> dict[str, str]:
    """Environment variable -> settings field, as pydantic-settings resolves them (prefix, aliases)."""
    from pydantic import AliasChoices

    prefix = Settings.model_config.get("env_prefix", "")
    names = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            choices = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [prefix + field_name]
        # Case-insensitive settings: the documented name is the upper-case one.
        for choice in choices:
            if choice.upper() == choice or len(choices) == 1:
                names[choice.upper()] = field_name
    return names


def entrypoint_env_names() -> set[str]:
    return set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", ENTRYPOINT.read_text()))


def parser_options(parser: argparse.ArgumentParser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {opt for action in sub.choices[command]._actions for opt in action.option_strings}


# --- compose: services, health, dependencies, GPUs ---------------------------------------------------------


def test_compose_has_the_three_services_with_healthchecks(compose):
    services = compose["services"]
    assert set(services) >= {"redis", "retrieval", "trainer"}
    redis_image = interpolate(services["redis"]["image"])
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-[a-z0-9]+)?", redis_image), f"not pinned: {redis_image}"
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    retrieval_check = " ".join(services["retrieval"]["healthcheck"]["test"])
    assert "/readyz" in retrieval_check
    route_file = (ROOT / "retrieval_service" / "api" / "routes" / "health.py").read_text()
    assert '"/readyz"' in route_file, "the healthcheck hits a route the service has"


def test_compose_dependencies_wait_for_health(compose):
    services = compose["services"]
    assert services["retrieval"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["trainer"]["depends_on"]["retrieval"]["condition"] == "service_healthy"


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_reservations(compose):
    for name in ("retrieval", "trainer"):
        devices = _gpu_devices(compose["services"][name])
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name


def test_cpu_override_removes_gpu_reservations_and_selects_cpu(compose, compose_cpu):
    for name in ("retrieval", "trainer"):
        override = compose_cpu["services"][name]
        assert isinstance(override.get("deploy"), Tagged) and override["deploy"].tag == "!reset", name
        args = override["build"]["args"]
        assert "cpu" in args["TORCH_INDEX_URL"] and "nvidia/cuda" not in interpolate(args["BASE_IMAGE"])
    assert compose_cpu["services"]["retrieval"]["environment"]["SJFT_DEVICE"] == "cpu"
    assert "gpu" not in compose_cpu["services"]["retrieval"]["build"]["args"]["FAISS_PACKAGE"]
    # The trainer command is the GPU one with --device cpu, nothing else changed.
    gpu_cmd = [interpolate(str(a)) for a in compose["services"]["trainer"]["command"]]
    cpu_cmd = [interpolate(str(a)) for a in untag(compose_cpu["services"]["trainer"]["command"])]
    assert cpu_cmd[cpu_cmd.index("--device") + 1] == "cpu"
    gpu_cmd[gpu_cmd.index("--device") + 1] = "cpu"
    assert cpu_cmd == gpu_cmd


def test_compose_volumes_are_declared(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("$", ".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


# --- commands, modules, flags ------------------------------------------------------------------------------


def test_trainer_command_parses_with_the_real_cli(compose):
    from trainer.cli import build_parser

    command = [interpolate(str(a)) for a in compose["services"]["trainer"]["command"]]
    args = build_parser().parse_args(command)  # exits (fails the test) on an unknown flag or bad value
    assert args.command == "run" and args.service.startswith("http://retrieval:")
    assert args.service.endswith(":" + interpolate("${SJFT_PORT:-8000}"))
    assert (ROOT / "trainer" / "__main__.py").is_file()


def test_entrypoint_exists_is_executable_and_uses_real_build_flags():
    assert ENTRYPOINT.is_file() and os.access(ENTRYPOINT, os.X_OK)
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    from retrieval_service.cli import build_parser

    text = ENTRYPOINT.read_text()
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    # (python -m sjft.demo.data takes --out and --size too)
    assert used <= parser_options(build_parser(), "build"), used - parser_options(build_parser(), "build")
    assert {"--source", "--out", "--size", "--device"} <= used
    assert "python -m retrieval_service build" in text and "python -m sjft.demo.data" in text
    assert (ROOT / "retrieval_service" / "__main__.py").is_file()
    assert 'if __name__ == "__main__"' in (ROOT / "sjft" / "demo" / "data.py").read_text()


def test_dockerfile_commands_name_real_modules():
    retrieval = dict(dockerfile_instructions(DOCKERFILES["retrieval"]))
    assert retrieval["CMD"] == '["python", "-m", "retrieval_service", "serve"]'
    assert "entrypoint-retrieval.sh" in retrieval["ENTRYPOINT"]
    trainer = dict(dockerfile_instructions(DOCKERFILES["trainer"]))
    assert trainer["ENTRYPOINT"] == '["python", "-m", "trainer"]'


# --- Dockerfiles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_multistage_non_root_and_pinned(name):
    path = DOCKERFILES[name]
    instructions = dockerfile_instructions(path)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2, "builder + runtime stages"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage runs as an unprivileged user"
    text = path.read_text()
    pins = dict(re.findall(r"ARG (TORCH_VERSION|TORCHVISION_VERSION)=(\S+)", text))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={pins["TORCH_VERSION"]}"' in pyproject
    assert f'"torchvision=={pins["TORCHVISION_VERSION"]}"' in pyproject
    assert "nvidia/cuda:12." in text and "/whl/cu12" in text, "CUDA 12 base and matching torch wheels"
    assert re.search(r"pip install --upgrade pip==[\d.]+ setuptools==[\d.]+ wheel==[\d.]+", text)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_orders_layers_for_caching_and_copies_existing_paths(name):
    instructions = dockerfile_instructions(DOCKERFILES[name])
    copies = [(i, rest) for i, (word, rest) in enumerate(instructions) if word == "COPY"]
    for _, rest in copies:
        if "--from=" in rest:
            continue  # from another stage, not the build context
        parts = [p for p in rest.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY of a missing path {src}"
    first_source = min(i for i, rest in copies if rest.split()[0] in (".", "services", "trainer"))
    requirements = next(i for i, (word, rest) in enumerate(instructions)
                        if word == "RUN" and "pip install -r" in rest)
    torch_layer = next(i for i, (word, rest) in enumerate(instructions)
                       if word == "RUN" and "torch==" in rest)
    assert torch_layer < requirements < first_source, "dependencies are installed before the source is copied"


def test_retrieval_image_health_port_and_gpu_faiss(compose):
    instructions = dockerfile_instructions(DOCKERFILES["retrieval"])
    health = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert health and "/readyz" in health[0]
    exposed = {rest for word, rest in instructions if word == "EXPOSE"}
    default_port = Settings.model_fields["port"].default
    assert exposed == {str(default_port)}
    published = compose["services"]["retrieval"]["ports"][0]
    assert interpolate(published).split(":")[-1] == str(default_port)
    assert interpolate(compose["services"]["retrieval"]["environment"]["SJFT_PORT"]) == str(default_port)
    text = DOCKERFILES["retrieval"].read_text()
    assert re.search(r"FAISS_PACKAGE=faiss-gpu-cu12==[\d.]+(post\d+)?", text)


# --- configuration: every variable is read by something and documented ----------------------------------


def test_service_environment_is_read_by_settings_or_entrypoint(compose):
    known = set(settings_env_names()) | entrypoint_env_names()
    environment = compose["services"]["retrieval"]["environment"]
    unknown = set(environment) - known
    assert not unknown, f"variables nobody reads: {sorted(unknown)}"
    for word, rest in dockerfile_instructions(DOCKERFILES["retrieval"]):
        if word == "ENV":
            names = set(re.findall(r"([A-Z_][A-Z0-9_]*)=", rest))
            assert names - IMAGE_ENV <= known, f"ENV nobody reads: {sorted(names - IMAGE_ENV - known)}"


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_env_example_documents_exactly_the_compose_variables_with_the_same_defaults():
    documented = _env_example()
    used: dict[str, set[str]] = {}
    for path in (COMPOSE, COMPOSE_CPU):
        for name, default in VAR.findall(path.read_text()):
            used.setdefault(name, set()).add(default)
    assert set(used) == set(documented), (
        f"undocumented: {sorted(set(used) - set(documented))}; unused: {sorted(set(documented) - set(used))}"
    )
    for name, defaults in used.items():
        assert defaults == {documented[name]}, f"{name}: compose defaults {defaults} vs .env.example"


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "bench_out", "demo_out"} <= ignored
    copied = {"pyproject.toml", "README.md", "services", "retrieval_service", "trainer", "sjft", "docker"}
    assert not copied & ignored


# --- what the smoke test (scripts/compose_smoke.sh) relies on ---------------------------------------------

BUILDKIT_ONLY = [
    (re.compile(r"^#\s*syntax=", re.M), "a `# syntax=` line (pulls a frontend image from a registry)"),
    (re.compile(r"<<-?'?\w+'?"), "a heredoc"),
    (re.compile(r"--(chmod|mount|link)\b"), "a BuildKit-only flag"),
]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfiles_use_plain_syntax_that_the_classic_builder_reads(name):
    text = DOCKERFILES[name].read_text()
    for pattern, what in BUILDKIT_ONLY:
        assert not pattern.search(text), f"{name}: {what}; an engine without buildx cannot build it"


def test_the_two_images_share_their_first_layers():
    """Identical instructions from the same base are one cached layer: the second image reuses the interpreter
    and the multi-GB torch layer of the first."""
    retrieval = dockerfile_instructions(DOCKERFILES["retrieval"])
    trainer = dockerfile_instructions(DOCKERFILES["trainer"])
    shared = 0
    for a, b in zip(retrieval, trainer, strict=False):
        if a != b:
            break
        shared += 1
    torch_layer = next(i for i, (word, rest) in enumerate(retrieval) if word == "RUN" and "torch==" in rest)
    assert shared > torch_layer, f"the Dockerfiles differ before the torch layer (at instruction {shared})"


def test_base_image_and_torch_index_are_build_arguments_passed_by_compose(compose, compose_cpu):
    for name, path in DOCKERFILES.items():
        instructions = dockerfile_instructions(path)
        assert instructions[0][0] == "ARG" and instructions[0][1].startswith("BASE_IMAGE=nvidia/cuda:")
        stages: set[str] = set()
        for word, rest in instructions:
            if word == "FROM":  # every stage starts from the base argument or from an earlier stage
                image, *alias = rest.split(" AS ")
                assert image == "${BASE_IMAGE}" or image in stages, (name, rest)
                stages.update(alias)
        # An empty TORCH_INDEX_URL falls back to pip's configured index (the smoke test's wheelhouse).
        assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in path.read_text(), name
        for override in (compose, compose_cpu):
            args = override["services"][name]["build"]["args"]
            assert {"BASE_IMAGE", "TORCH_INDEX_URL"} <= set(args), name
            # `-`, not `:-`: an empty value is passed on
            assert re.fullmatch(r"\$\{[A-Z_]+-[^}]+\}", args["TORCH_INDEX_URL"])
        assert compose["services"][name]["build"]["network"] == "${BUILD_NETWORK:-default}"


@pytest.mark.parametrize("script", ["scripts/compose_smoke.sh", "scripts/containers/lib.sh",
                                    "docker/entrypoint-retrieval.sh", "docker/install-python.sh"])
def test_shell_scripts_parse(script):
    shell = "sh" if script.endswith("install-python.sh") else "bash"
    result = subprocess.run([shell, "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ci_runs_the_smoke_test_and_reports_a_skip():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("scripts/compose_smoke.sh")
    assert "77" in ci and "skipped" in ci
    assert "compose-test:" in (ROOT / "Makefile").read_text()
