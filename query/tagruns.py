"""Tag runs as label sets applied to the archive: which runs apply to images that later index runs
add (the newest of each label set and method), an image's labels in each, and deleting a run."""

from __future__ import annotations

import json
import shutil
from typing import Any

from core.errors import NotFound
from indexer.catalog import Catalog
from indexer.home import Home
from query.scoring import run_dir


def applied_runs(catalog: Catalog, model_key: str, *, to_new_images: bool = False) -> list[dict[str, Any]]:
    """The newest successful tag run of each distinct (method, labels) made with this model;
    ``to_new_images``: among the runs without a filter only (those new images are tagged for)."""
    seen, out = set(), []
    for run in catalog.runs(limit=500):
        params = json.loads(run["params"] or "{}")
        if run["kind"] != "tag" or run["status"] != "ok" or params.get("model_key") != model_key:
            continue
        if to_new_images and params.get("filter"):
            continue
        key = (params.get("method"), tuple(params.get("labels", ())))
        if key not in seen:
            seen.add(key)
            out.append(run | {"config": params})
    return out


def tag_run(catalog: Catalog, run_id: int | None) -> dict[str, Any]:
    """The finished tag run ``run_id`` (default: the newest) as a runs row with its ``params`` parsed;
    :class:`NotFound` else."""
    if run_id is None:
        run_id = catalog.latest_tag_run()
        if run_id is None:
            raise NotFound("no tag run yet: run `vistag tag --labels ...` first")
    run = catalog.run(run_id)
    if run is None or run["kind"] != "tag" or run["status"] != "ok":
        raise NotFound(f"no finished tag run {run_id} (see `vistag runs`)")
    params = run.get("params") or {}
    return run | {"params": json.loads(params) if isinstance(params, str) else params}


def delete_tag_run(home: Home, catalog: Catalog, run_id: int) -> dict[str, Any]:
    """Delete tag run ``run_id``: its tags and its folder; its label set is then no longer applied to
    new images (unless another run with the same labels and method remains, named in ``still_applied``)."""
    run = catalog.run(run_id)
    tags = catalog.delete_tag_run(run_id)
    shutil.rmtree(run_dir(home, run_id), ignore_errors=True)
    params = json.loads((run or {}).get("params") or "{}")
    same = [
        r["id"]
        for r in applied_runs(catalog, params.get("model_key", ""), to_new_images=True)
        if (r["config"].get("method"), r["config"].get("labels"))
        == (params.get("method"), params.get("labels"))
    ]
    return {"run_id": run_id, "tags": tags, "still_applied": same}


def explain(catalog: Catalog, model_key: str, image_id: int, top: int = 5) -> list[dict[str, Any]]:
    """The image's best labels in every label set applied (newest run per set): raw score,
    calibrated confidence, method and run."""
    out = []
    for run in applied_runs(catalog, model_key):
        for tag in catalog.tags(run["id"], image_ids=[image_id])[:top]:
            out.append(
                {
                    "run_id": run["id"],
                    "label": tag["label"],
                    "score": tag["score"],
                    "confidence": tag["confidence"],
                    "rank": tag["rank"],
                    "method": tag["method"],
                }
            )
    return out
