"""The Beam worker container and runner option files stay true to this repository: the image's
Beam version is the installed one, its pinned libraries are the installed ones, everything it
copies exists and is in its build context, every option file parses with the job's own option
parser without unknown options, and the documented commands parse."""

from __future__ import annotations

import re
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

from pipeline.runners import pipeline_options
from vistag.cli import build_parser
from vistag.cli.commands import beam_args

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "infra" / "worker"
DOCKERFILE = (WORKER / "Dockerfile").read_text()
BEAM_FILES = sorted((ROOT / "infra" / "beam").glob("*.args"))


def _major_minor(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def _arg_defaults() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", DOCKERFILE, flags=re.M))


def test_dockerfile_is_the_beam_sdk_image_of_the_installed_beam():
    defaults = _arg_defaults()
    (base,) = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.M)
    assert base == "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}"
    assert _major_minor(defaults["BEAM_VERSION"]) == _major_minor(version("apache-beam")), (
        "infra/worker/Dockerfile's BEAM_VERSION must be the installed apache-beam's: workers run the launcher's Beam"
    )
    python = _major_minor(defaults["PYTHON_VERSION"])
    assert python[0] == sys.version_info[0] and (3, 10) <= python <= (
        3,
        13,
    )  # Beam publishes these SDK images
    assert re.search(r'"apache-beam\[gcp\]==\$\{BEAM_VERSION\}"', DOCKERFILE)  # pip may not move Beam
    assert not re.search(r"^(ENTRYPOINT|CMD)\b", DOCKERFILE, flags=re.M)  # Beam's boot entrypoint stays


def test_pinned_worker_libraries_are_the_installed_ones():
    pins = {}
    for line in (WORKER / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, pinned = line.split("==")
            pins[name] = pinned
    assert {"torch", "open_clip_torch", "pillow", "numpy"} <= set(pins)
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is pinned for the workers but not installed here")
        assert _major_minor(installed) == _major_minor(pinned), (
            f"{name}: workers {pinned}, launcher {installed}"
        )


def test_dockerfile_copies_what_exists_and_is_in_its_build_context():
    ignore = [x.strip() for x in (WORKER / "Dockerfile.dockerignore").read_text().splitlines()]
    allowed = {x[1:].rstrip("/") for x in ignore if x.startswith("!")}
    assert "*" in ignore
    sources = [
        src for line in re.findall(r"^COPY (.+)$", DOCKERFILE, flags=re.M) for src in line.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src.rstrip("/") in allowed, f"{src} is copied but left out of the build context"
    if tomllib is None:
        return
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    assert {p.rstrip("*") for p in packages} <= {s.rstrip("/") for s in sources}  # every package of vistag
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "gpu" in extras and "VISTAG_EXTRAS" in DOCKERFILE


@pytest.mark.parametrize("path", BEAM_FILES, ids=lambda p: p.name)
def test_beam_option_files_have_no_unknown_options(path):
    args, extra = build_parser().parse_known_args(["index", "/photos", f"@{path}"])
    options = pipeline_options(beam_args(args, extra))
    known = options.get_all_options(drop_default=True)
    unknown = set(options.get_all_options(drop_default=True, retain_unknown_options=True)) - set(known)
    assert not unknown, f"{path.name}: options Beam does not know: {sorted(unknown)}"
    if known["runner"] == "DataflowRunner":
        assert known["sdk_location"] == "container" and known["sdk_container_image"]
        assert args.shards.startswith("gs://")  # remote workers write the shards where the launcher reads
    if known["runner"] in ("FlinkRunner", "SparkRunner"):
        assert known["environment_type"] == "DOCKER" and known["environment_config"]


def test_documented_worker_commands_parse():
    readme = (ROOT / "infra" / "README.md").read_text()
    build = next(line for line in _commands(readme) if line.startswith("docker build"))
    words = shlex.split(build)
    assert words[words.index("-f") + 1] == "infra/worker/Dockerfile" and words[-1] == "."
    build_args = {w.split("=")[0] for w in words if "=" in w and not w.startswith("-")}
    assert {"PYTHON_VERSION", "BEAM_VERSION"} <= build_args <= set(_arg_defaults())
    runs = [line for line in _commands(readme) if line.startswith(".venv/bin/vistag index")]
    assert any("@infra/beam/dataflow-gpu.args" in r and "--sdk_container_image=" in r for r in runs)
    for run in runs:
        argv = [w.replace("$IMAGE", "registry.example/vistag/worker:1") for w in shlex.split(run)[1:]]
        args, extra = build_parser().parse_known_args(argv)
        assert args.command == "index" and args.paths
        options = pipeline_options(beam_args(args, extra)).get_all_options(drop_default=True)
        if "--sdk_container_image=$IMAGE" in run:  # the command line wins over the file's placeholder
            assert options["sdk_container_image"] == "registry.example/vistag/worker:1"


def _commands(markdown: str) -> list[str]:
    """Lines of the ```bash blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        lines += [
            x.strip() for x in block.replace("\\\n", " ").splitlines() if x.strip() and not x.startswith("#")
        ]
    return lines
