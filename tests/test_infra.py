"""Every scheduling and runner file in infra/ parses and runs the one idempotent command."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from vistag.cli import build_parser
from vistag.cli.commands import beam_args

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _parses_as_index(argv: list[str]) -> None:
    assert Path(argv[0]).name == "vistag" and argv[1] == "index", argv
    args, extra = build_parser().parse_known_args(argv[1:])
    assert args.command == "index" and args.paths and not extra


def test_systemd_service_and_timer():
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read(INFRA / "systemd" / "vistag-index.service")
    assert service["Service"]["Type"] == "oneshot"
    _parses_as_index(shlex.split(service["Service"]["ExecStart"]))
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read(INFRA / "systemd" / "vistag-index.timer")
    assert timer["Timer"]["Unit"] == "vistag-index.service" and timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_cron_line():
    lines = [
        x for x in (INFRA / "cron" / "vistag.cron").read_text().splitlines() if x and not x.startswith("#")
    ]
    (line,) = lines
    fields = line.split(None, 6)
    assert all(f == "*" or f.isdigit() for f in fields[:5]) and fields[5] == "vistag"
    command = shlex.split(fields[6].split(">>")[0])
    _parses_as_index([c for c in command if "=" not in c or c.startswith("--")])


def test_kubernetes_cronjob():
    doc = yaml.safe_load((INFRA / "k8s" / "cronjob.yaml").read_text())
    assert doc["kind"] == "CronJob" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(doc["spec"]["schedule"].split()) == 5
    (container,) = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    _parses_as_index(container["command"])
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert (
        mounts == {"home", "photos"}
        and {"name": "VISTAG_HOME", "value": "/var/lib/vistag"} in container["env"]
    )


@pytest.mark.parametrize(
    "name, runner",
    [
        ("dataflow-gpu.args", "DataflowRunner"),
        ("flink.args", "FlinkRunner"),
        ("spark.args", "SparkRunner"),
        ("local-multiprocess.args", "FnApiRunner"),
    ],
)
def test_beam_option_files(name, runner):
    args, extra = build_parser().parse_known_args(["index", "/photos", f"@{INFRA / 'beam' / name}"])
    assert PipelineOptions(list(beam_args(args, extra))).view_as(StandardOptions).runner == runner


def test_local_multiprocess_options_really_run(corpus, tiny_model, tmp_path, cli):
    """Two SDK worker processes (as on a distributed runner: pickled steps, a model per process)
    store what the default in-process run stores."""
    from indexer import versions
    from query.tagging import corpus_matrix
    from vistag import Archive

    res = cli(
        "index",
        corpus.root,
        "--home",
        tmp_path / "home",
        "--model",
        tiny_model,
        "--chunk-size",
        "8",
        f"@{INFRA / 'beam' / 'local-multiprocess.args'}",
        "--json",
    )
    assert res.code == 0, res.err
    assert res.json()["embedded"] == len(corpus.good) and res.json()["failed"] == len(corpus.bad)
    assert cli("index", corpus.root, "--home", tmp_path / "one", "--model", tiny_model, "--json").code == 0
    vectors = []
    for home in ("home", "one"):
        with Archive(tmp_path / home) as archive:
            ids, xb = corpus_matrix(archive.home, archive.catalog, versions.current_version(archive.home))
            uris = {r["id"]: r["uri"] for r in archive.catalog.images(ids.tolist(), status=None)}
            vectors.append({uris[i]: x for i, x in zip(ids.tolist(), xb, strict=True)})
    assert vectors[0].keys() == vectors[1].keys() and len(vectors[0]) == len(corpus.good)
    for uri, x in vectors[1].items():
        np.testing.assert_allclose(vectors[0][uri], x, atol=1e-6)
