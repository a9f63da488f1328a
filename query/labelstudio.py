"""A tag run as Label Studio tasks with pre-annotations, for people to review vistag's tags there.

One task per indexed image: ``data.image`` (the image's URL, from a template), ``data.uri`` and
``data.vistag_id``, and, when the run gave it tags that pass ``min_confidence``, one prediction:
``{model_version, score, result: [{from_name, to_name, type: "choices", value: {choices}}]}``.
The matching labeling config (:func:`label_config`) lists every label of the run as a choice of a
multiple-choice ``Choices`` control named ``tags`` on an ``Image`` named ``image``.
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from core import uris
from core.errors import InputError
from indexer.catalog import Catalog, ImageFilter
from query.export import export_rows
from query.tagruns import tag_run

FROM_NAME, TO_NAME = "tags", "image"
DEFAULT_IMAGE_URL = "{uri}"
PLACEHOLDERS = ("id", "uri", "path")


def check_image_url(template: str) -> str:
    """``template`` when it formats with the known placeholders only; :class:`InputError` else."""
    try:
        template.format(id=0, uri="x", path="x")
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(
            f"--image-url {template!r}: use the placeholders {{id}}, {{uri}} or {{path}} ({err})"
        ) from None
    return template


def image_url(template: str, image_id: int, uri: str) -> str:
    """The task's ``data.image``: ``{uri}`` as stored, ``{path}`` the local path without its leading
    slash and URL-quoted (Label Studio's ``/data/local-files/?d={path}`` with document root ``/``)."""
    path = uri if uris.is_remote(uri) else uris.to_path(uri)  # a str; undecodable bytes as surrogates
    relative = posixpath.normpath(path).lstrip("/")
    return template.format(id=image_id, uri=uri, path=quote(relative, safe="/", errors="surrogateescape"))


def tasks(
    catalog: Catalog,
    run_id: int | None = None,
    min_confidence: float = 0.5,
    url: str = DEFAULT_IMAGE_URL,
    where: ImageFilter | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Label Studio tasks of every indexed image (that passes ``where``) for tag run ``run_id``
    (default: the newest), and the run's labels. A prediction holds the tags whose calibrated
    confidence is at least ``min_confidence`` (a run that stored no confidences: every stored tag),
    best first."""
    if not 0.0 <= min_confidence <= 1.0:
        raise InputError(f"--min-confidence must be within [0, 1], got {min_confidence}")
    run = tag_run(catalog, run_id)
    params = run.get("params") or {}
    version = f"vistag tag run {run['id']} ({params.get('method', 'zeroshot')})"
    out = []
    for row in export_rows(catalog, run["id"], where):
        if row["status"] != "indexed":
            continue
        task: dict[str, Any] = {
            "data": {
                "image": image_url(url, row["id"], row["uri"]),
                "uri": row["uri"],
                "vistag_id": row["id"],
            }
        }
        chosen = [t for t in row["tags"] if t["confidence"] is None or t["confidence"] >= min_confidence]
        if chosen:
            task["predictions"] = [_prediction(version, chosen)]
        out.append(task)
    return out, list(params.get("labels") or [])


def _prediction(version: str, chosen: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [t["confidence"] for t in chosen if t["confidence"] is not None]
    value = {"choices": [t["label"] for t in chosen]}
    prediction: dict[str, Any] = {
        "model_version": version,
        "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": value}],
    }
    if scores:
        prediction["score"] = round(sum(scores) / len(scores), 4)
    return prediction


def label_config(labels: list[str]) -> str:
    """The Label Studio labeling config (XML) the tasks fit: an image and a multiple choice of ``labels``."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="multiple" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )
