"""vistag export --format label-studio: tasks with pre-annotations and the labeling config they fit,
checked here for content and (slow) by Label Studio's own SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

LABELS = ["red circle", "blue square", 'a "quoted" <odd> & label', "yellow triangle"]
SHAPES_MODEL = "local-dir:" + str(Path(__file__).resolve().parent / "fixtures" / "shapes-clip")


@pytest.fixture(scope="module")
def tagged_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes corpus tagged by the shipped shapes model (its confidences spread; a random model's do not)."""
    from vistag import Archive, synth

    root = tmp_path_factory.mktemp("labelstudio")
    synth.make_corpus(root / "images", 30, seed=9, image_sizes=(40, 56))
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with Archive(root / "home") as archive:
        archive.index([root / "images"], model=SHAPES_MODEL, batch_size=8)
        archive.tag(LABELS)
    return root / "home"


def _export(cli, home: Path, tmp_path: Path, *extra: object) -> tuple[list[dict], str]:
    config = tmp_path / "config.xml"
    out = cli("export", "--home", home, "--format", "label-studio", "--label-config", config, *extra)
    assert out.code == 0, out.err
    return json.loads(out.out), config.read_text()


def test_one_task_per_indexed_image_with_its_confident_tags_best_first(cli, tagged_home, tmp_path):
    rows = {r["id"]: r for r in cli("export", "--home", tagged_home, "--format", "json").json()}
    indexed = {i for i, r in rows.items() if r["status"] == "indexed"}
    best = sorted(max(t["confidence"] for t in rows[i]["tags"]) for i in indexed)
    cut = float(f"{(best[0] + best[-1]) / 2:.6f}")  # some images have no tag this confident, some do
    tasks, config = _export(cli, tagged_home, tmp_path, "--min-confidence", cut)
    assert sorted(t["data"]["vistag_id"] for t in tasks) == sorted(indexed) and len(indexed) == 30
    for task in tasks:
        row = rows[task["data"]["vistag_id"]]
        assert task["data"]["uri"] == task["data"]["image"] == row["uri"]
        want = [t["label"] for t in row["tags"] if t["confidence"] >= cut]
        got = task.get("predictions", [{}])[0].get("result", [{}])[0].get("value", {}).get("choices", [])
        assert got == want  # the run's order: best first
        if want:
            prediction = task["predictions"][0]
            assert prediction["model_version"].startswith("vistag tag run ")
            confidences = [t["confidence"] for t in row["tags"] if t["confidence"] >= cut]
            assert prediction["score"] == pytest.approx(sum(confidences) / len(confidences), abs=1e-4)
            (result,) = prediction["result"]
            assert (result["from_name"], result["to_name"], result["type"]) == ("tags", "image", "choices")
    assert any("predictions" in t for t in tasks) and any("predictions" not in t for t in tasks)
    view = ET.fromstring(config)
    assert [c.get("value") for c in view.iter("Choice")] == LABELS  # escaped and parsed back exactly
    (image,) = view.iter("Image")
    (choices,) = view.iter("Choices")
    assert (image.get("name"), image.get("value")) == ("image", "$image")
    assert (choices.get("name"), choices.get("toName"), choices.get("choice")) == (
        "tags",
        "image",
        "multiple",
    )
    everything, _ = _export(cli, tagged_home, tmp_path, "--min-confidence", "0")
    assert (
        sum(len(t["predictions"][0]["result"][0]["value"]["choices"]) for t in everything) == len(LABELS) * 30
    )


def test_image_url_templates_and_wrong_options_are_errors(cli, tagged_home, tmp_path):
    tasks, _ = _export(cli, tagged_home, tmp_path, "--image-url", "/data/local-files/?d={path}&id={id}")
    first = tasks[0]["data"]
    assert first["image"] == f"/data/local-files/?d={first['uri'].lstrip('/')}&id={first['vistag_id']}"
    cases = [
        (("--format", "csv", "--image-url", "x"), "--image-url does not apply to --format csv"),
        (("--format", "npz", "--run", "1"), "--run does not apply to --format npz"),
        (("--format", "label-studio", "--image-url", "{name}"), "use the placeholders {id}, {uri} or {path}"),
        (("--format", "label-studio", "--run", "1"), "no finished tag run 1"),
        (("--format", "label-studio", "--min-confidence", "2"), "--min-confidence must be within [0, 1]"),
    ]
    for extra, message in cases:
        out = cli("export", "--home", tagged_home, *extra)
        assert out.code != 0 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err


def test_a_home_without_tag_runs_says_so(cli, indexed_home, tmp_path):
    home, _ = indexed_home
    out = cli("export", "--home", home, "--format", "label-studio")
    assert out.code == 4 and "no tag run yet" in out.err


VALIDATE = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
config, tasks = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
interface = LabelInterface(config)
errors = [f"task {i}: data" for i, t in enumerate(tasks) if not interface.validate_task({"data": t["data"]})]
for i, task in enumerate(tasks):
    for p in task.get("predictions", []):
        errors += [f"task {i}: {e}" for e in interface.validate_prediction(p, return_errors=True)]
print(json.dumps(errors))
"""


def _label_studio_python() -> str:
    """A Python with ``label-studio-sdk`` (``$VISTAG_LABEL_STUDIO_PYTHON``, else a virtual environment
    made once under ~/.cache: the SDK pins versions of its own, so it stays out of vistag's)."""
    given = os.environ.get("VISTAG_LABEL_STUDIO_PYTHON")
    if given:
        return given
    env = Path.home() / ".cache" / "vistag-tests" / "label-studio-sdk"
    python = env / "bin" / "python"
    if not python.exists():
        venv.create(env, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "label-studio-sdk"], check=True, timeout=900)
    return str(python)


@pytest.mark.slow
def test_label_studio_accepts_the_tasks_and_their_predictions(cli, tagged_home, tmp_path):
    tasks, _ = _export(cli, tagged_home, tmp_path, "--min-confidence", "0.2")
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    python = _label_studio_python()

    def validate(path: Path) -> list[str]:
        run = [python, "-c", VALIDATE, str(tmp_path / "config.xml"), str(path)]
        return json.loads(subprocess.run(run, capture_output=True, text=True, check=True).stdout)

    assert validate(tmp_path / "tasks.json") == []
    tampered = json.loads(json.dumps(tasks))
    tampered[0].setdefault("predictions", [{"model_version": "x", "result": []}])
    tampered[0]["predictions"][0]["result"] = [
        {"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": ["a cat"]}}
    ]
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    assert validate(tmp_path / "tampered.json")  # the control: Label Studio does reject a wrong label
    assert sys.executable != python
