"""The public Python API: one :class:`Archive` per home, the same operations as the CLI.

>>> from vistag import Archive
>>> archive = Archive("~/photos-index")
>>> archive.index(["~/Pictures"])                      # doctest: +SKIP
>>> [hit.uri for hit in archive.search("a red bicycle", k=5)]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from core.errors import CatalogError, DamagedState, IndexNotFound, InputError, NotFound
from indexer import check as integrity
from indexer import versions
from indexer.catalog import Catalog, ImageFilter
from indexer.home import Home
from query.search import Hit, Searcher
from query.vocab import SHORT_TEMPLATES, Label
from vistag.api_corrections import CorrectionMethods

if TYPE_CHECKING:
    from indexer.job import IndexResult
    from query.scoring import TagConfig, TagResult
    from query.xmp import XmpResult

# Heavy modules (Beam, scipy, torch) are imported by the methods that need them: a search, a status
# or a server never imports the indexing pipeline.


class Archive(CorrectionMethods):
    """An indexed image archive living in a home directory (and optionally an external database);
    its corrections methods (confirm, reject, review...) are in :mod:`vistag.api_corrections`."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        db: str | None = None,
        device: str | None = None,
        *,
        change_db: bool = False,
        engine: str | None = None,
    ):
        """``db``: the catalog's database URL (default: ``$VISTAG_DB``, else the one the home remembers,
        else ``HOME/catalog.db``); another than the home's is an :class:`InputError` unless
        ``change_db`` (then the next :meth:`index` moves the home to it). ``engine``: what runs the
        model on a CPU, ``auto``, ``torch`` or ``openvino`` (default ``$VISTAG_ENGINE``, else
        ``auto``; see :mod:`core.engines`)."""
        from core.engines import requested

        self.engine = requested(engine)
        self.home = Home.resolve(home, db, change_db=change_db)
        self.device = device
        self._catalog: Catalog | None = None
        self._searcher: Searcher | None = None

    @property
    def catalog(self) -> Catalog:
        """The catalog; :class:`NotFound` when the home holds no archive (nothing is created)."""
        if self._catalog is None:
            if not self.home.is_archive():
                raise NotFound(
                    f"no archive in {self.home.root}: make one with `vistag index PATH --home {self.home.root}`"
                )
            try:
                self._catalog = Catalog(self.home.db_url)
            except CatalogError as err:
                if self.home.settings.db_password_removed and self.home.db_url == self.home.settings.db:
                    raise CatalogError(
                        f"{err} (this home remembers its database without the password: "
                        "pass --db, set VISTAG_DB, or use ~/.pgpass)"
                    ) from err
                raise
        return self._catalog

    @property
    def searcher(self) -> Searcher:
        """The searcher (it raises :class:`CatalogMismatch` when the catalog is not the published
        index's)."""
        if self._searcher is None:
            self._searcher = Searcher(self.home, self.catalog, self.device, engine=self.engine)
        return self._searcher

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        self._catalog = self._searcher = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index(self, paths: Sequence[str | os.PathLike[str]], **options: Any) -> IndexResult:
        """Embed every image under ``paths`` and publish a new index version.

        ``options`` are the fields of :class:`indexer.job.IndexConfig` (model, pretrained,
        batch_size, index_type, dry_run, progress, beam_args, ...).
        """
        from indexer.job import IndexConfig, run_index
        from query.inductive import tag_new_images

        options.setdefault("device", self.device)
        options.setdefault("engine", self.engine)
        config = IndexConfig(inputs=tuple(str(p) for p in paths), **options)

        def tag_new(catalog: Catalog, result: IndexResult) -> IndexResult:  # under the run's writer lock
            if result.run_id is None or not (result.embedded or result.reused):
                return result
            searcher = Searcher(self.home, catalog, self.device, engine=self.engine)
            # images only described again (--refresh-metadata, a changed sidecar) keep their tags
            touched = catalog.images_touched(result.run_id, {e.uri for e in result.plan.refresh})
            return replace(result, tag_runs=tuple(tag_new_images(self.home, catalog, searcher, touched)))

        return run_index(self.home, config, then=tag_new)

    def plan(self, paths: Sequence[str | os.PathLike[str]], **options: Any) -> IndexResult:
        """What :meth:`index` would do, without doing it."""
        return self.index(paths, dry_run=True, **options)

    def search(self, text: str, k: int = 10, where: ImageFilter | None = None) -> list[Hit]:
        """Text-to-image search: the ``k`` best images, best first, among those that pass ``where``
        (``k`` of them whenever ``k`` pass; build it with :func:`query.filters.parse_filter`)."""
        return self.searcher.search(text, k, where)

    def similar(
        self, image: int | str | os.PathLike[str], k: int = 10, where: ImageFilter | None = None
    ) -> list[Hit]:
        """Image-to-image search from an indexed image id or uri, or any image file, among the images
        that pass ``where``."""
        return self.searcher.similar(image, k, where)

    def tag(
        self,
        labels: str | Sequence[str | Label],
        top: int = 3,
        *,
        method: str = "zeroshot",
        min_confidence: float = 0.0,
        templates: str | Sequence[str] = SHORT_TEMPLATES,
        store_top: int | None = None,
        store_all: bool = False,
        where: ImageFilter | None = None,
        corrections: bool = True,
        **zlap: Any,
    ) -> TagResult:
        """Tag every indexed image with ``labels`` (a list, a comma-separated string, a label file
        or a YAML/JSON vocabulary; see :mod:`query.vocab`). ``templates``: a list of prompt
        templates, or ``"short"``, ``"imagenet"``, ``"none"`` or a template file.

        ``method``: ``"zeroshot"``, ``"fewshot"`` or ``"zlap"`` (label propagation over the kNN graph; ``zlap``
        keywords ``k``, ``gamma``, ``alpha``). All scores are stored, or with ``store_top`` N
        only each image's N best labels (ranks 0..N-1); the result lists each image's ``top``
        labels whose calibrated confidence is at least ``min_confidence``. Storing every score
        of more than 100 million (image, label) pairs is refused (:class:`InputError`) unless
        ``store_all``. With ``where``, every image is scored but tags are stored (and listed) only
        for the indexed images that pass it, and the run is not applied to images indexed later.

        ``method`` ``"fewshot"``: zero-shot plus a cache of corrected images (:mod:`query.fewshot`).
        ``corrections``: use people's corrections of these labels (confirmed pairs get confidence 1
        and rank 0, rejected ones confidence 0 and are never listed; see :mod:`query.learning`);
        False gives the scores of an archive without any.
        """
        from query.tagging import tag_corpus

        extra = {**zlap, "store_top": store_top, "store_all": store_all, "corrections": corrections}
        config = self._tag_config(labels, method, top, min_confidence, templates, extra)
        return tag_corpus(self.home, self.catalog, self.searcher, config, where=where)

    def delete_tag_run(self, run_id: int) -> dict[str, Any]:
        """Delete a tag run (its tags and saved state): its label set is no longer applied to images
        that later :meth:`index` runs add. Returns ``run_id``, ``tags`` (rows deleted) and
        ``still_applied`` (other runs with the same labels and method, still applied)."""
        from indexer import recovery
        from query.tagruns import delete_tag_run

        with recovery.writer(self.home, self.catalog):
            return delete_tag_run(self.home, self.catalog, int(run_id))

    def duplicates(
        self,
        kind: str = "all",
        threshold: int | None = None,
        *,
        similarity: float | None = None,
        within: float | None = None,
        keep_rule: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Duplicate groups (see :mod:`query.duplicates`): ``groups`` largest first (each ``id``,
        ``kind``, ``members``, ``keep``, ``why``), the ``thresholds`` used, ``unhashed`` images.
        ``kind``: ``exact``, ``near``, ``similar`` or ``all``; ``threshold``: the largest
        perceptual-hash distance of near copies, in bits (default 10); ``similarity``: the cosine
        of similar shots (default: the archive's scale); ``within``: seconds between similar
        shots (default 600); ``keep_rule``: the keeper's tests in order (default
        ``pixels,format,oldest``)."""
        from query.dedupe import find_duplicates
        from query.duplicates import make_config

        return find_duplicates(
            self.home,
            self.catalog,
            self.searcher.version(),
            make_config(kind, threshold, similarity, within, keep_rule),
        )

    def resolve_duplicates(
        self,
        target: str | int,
        *,
        keep: int | None = None,
        not_duplicates: bool = False,
        move_to: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Remember a decision about a duplicate group (its id, or an image id of it): ``keep`` one
        member (the group does not come back while its contents stay the same; ``move_to`` moves the
        others into that folder, keeping their paths) or ``not_duplicates`` (its contents are
        never paired again). ``options`` as for :meth:`duplicates`, to find the group."""
        from indexer import recovery
        from query.dedupe import resolve

        listing = self.duplicates(**options)
        with recovery.writer(self.home, self.catalog):
            return resolve(
                self.home,
                self.catalog,
                listing,
                str(target),
                keep=keep,
                not_duplicates=not_duplicates,
                move_to=os.fspath(move_to) if move_to else None,
            )

    def evaluate(
        self,
        truth: str,
        labels: str | Sequence[str | Label] | None = None,
        *,
        methods: Sequence[str] = ("zeroshot", "zlap"),
        min_confidence: float = 0.5,
        fit_thresholds: bool = False,
        templates: str | Sequence[str] = SHORT_TEMPLATES,
        shots: str | Sequence[int] | None = None,
        **zlap: Any,
    ) -> dict[str, Any]:
        """Top-1 accuracy, per-label precision/recall and mAP of each method against a
        ``uri,label`` CSV (labels default to those in the truth file), or ``truth="keywords"``: the
        images' own keywords, for the ``labels`` given (required; see :mod:`query.evaluate`).
        ``shots`` (``"0,1,2,4,8"`` or a list; one N means 0 and N): also simulate that many
        confirmed truth images per label, ``report["shots"][N][method]`` = ``{"top1", "ece", ...}``
        (see :mod:`query.shots`)."""
        from query.evaluate import KEYWORDS, evaluate, keyword_truth, read_truth
        from query.shots import parse_shots

        counts = parse_shots(shots) if shots is not None else ()

        if truth == KEYWORDS:
            if labels is None:
                raise InputError("--truth keywords needs --labels: the keywords that are labels")
            config = self._tag_config(labels, "zeroshot", 1, min_confidence, templates, zlap)
            found = keyword_truth(self.catalog, config.names)
        else:
            found = read_truth(truth, self.catalog)
            labels = found.names if labels is None else labels
            config = self._tag_config(labels, "zeroshot", 1, min_confidence, templates, zlap)
        return evaluate(
            self.home, self.catalog, self.searcher, found, config, methods, fit_thresholds, counts
        )

    def explain(self, image: int | str | os.PathLike[str], top: int = 5) -> list[dict[str, Any]]:
        """An indexed image's best labels in every label set applied: score, confidence, method."""
        image_id = self._indexed_row(image)["id"]
        from query.tagruns import explain

        return explain(self.catalog, self.searcher.version().identity.key, image_id, top)

    def describe(self, image: int | str | os.PathLike[str]) -> dict[str, Any]:
        """What the archive knows of an indexed image (an id, path or uri): ``id``, ``uri``,
        ``status``, ``sha256``, ``size``, ``mtime``, ``width``, ``height``, ``taken`` (date taken,
        seconds since the epoch), ``camera``, ``lens``, ``lat``, ``lon`` (None where unknown),
        ``keywords`` (sorted) and ``corrections`` (the active ones of its content, as
        :meth:`corrections` lists them). Its tags: :meth:`explain`."""
        return self.catalog.details(self._indexed_row(image))

    def _indexed_row(self, image: int | str | os.PathLike[str]) -> dict[str, Any]:
        """The catalog row of an indexed image; :class:`NotFound` naming why for one that is not."""
        row = self.catalog.image(self.searcher.image_id(image))
        if row["status"] == "failed":
            failure = self.catalog.last_failure(row["uri"])
            why = f"{failure['stage']}: {failure['reason']}" if failure else "no reason recorded"
            raise NotFound(f"{row['uri']} could not be indexed ({why}); see `vistag failures`")
        if row["status"] != "indexed":
            raise NotFound(
                f"{row['uri']} is {row['status']}: it left the archive (no longer in a listed folder)"
            )
        return row

    def _tag_config(self, labels, method, top, min_confidence, templates, zlap) -> TagConfig:  # noqa: ANN001
        from query.scoring import TagConfig
        from query.vocab import named_templates, parse_vocabulary

        templates = named_templates(templates) if isinstance(templates, str) else tuple(templates)
        return TagConfig(tuple(parse_vocabulary(labels)), method, top, min_confidence, templates, **zlap)

    def export(
        self,
        fmt: str = "json",
        *,
        run: int | None = None,
        min_confidence: float = 0.5,
        image_url: str = "{uri}",
        where: ImageFilter | None = None,
    ) -> str:
        """Tags (of tag run ``run``, default the newest) and metadata for every image, as JSON or CSV
        text; or ``label-studio``: Label Studio tasks with the run's tags as pre-annotations (those of
        calibrated confidence at least ``min_confidence``; ``image_url``: the template of each task's
        image, see :mod:`query.labelstudio`). With ``where``, only the indexed images that pass it."""
        from query import labelstudio
        from query.export import render

        if fmt == "label-studio":
            tasks, _ = labelstudio.tasks(
                self.catalog, run, min_confidence, labelstudio.check_image_url(image_url), where
            )
            return json.dumps(tasks, indent=1, ensure_ascii=False)
        return render(self.export_rows(run, where), fmt)

    def label_studio_config(self, run: int | None = None) -> str:
        """The Label Studio labeling config (XML) that the ``label-studio`` export of ``run`` fits."""
        from query import labelstudio
        from query.tagruns import tag_run

        return labelstudio.label_config(list(tag_run(self.catalog, run)["params"]["labels"]))

    def write_xmp(
        self,
        paths: Sequence[str | os.PathLike[str]] = (),
        run: int | None = None,
        top: int = 5,
        min_confidence: float = 0.5,
        sidecar_name: str = "full",
        dry_run: bool = False,
    ) -> XmpResult:
        """Write the tags of tag run ``run`` (default: the newest) into the XMP sidecars of the indexed
        images under ``paths`` (default: all): per image its ``top`` best tags of calibrated
        confidence at least ``min_confidence``; new sidecars named ``full`` (``photo.jpg.xmp``) or
        ``stem`` (``photo.xmp``). ``dry_run``: write nothing, report what would change. Returns a
        :class:`query.xmp.XmpResult` (``.images``: uri, sidecar, status, added, removed, reason;
        ``.totals()``; ``.to_dict()``); a file that cannot be read or written is a failed entry."""
        from indexer import recovery
        from query.xmp import XmpConfig, write_xmp

        config = XmpConfig(
            tuple(os.fspath(p) for p in paths), run, top, min_confidence, sidecar_name, dry_run
        )
        if dry_run:
            return write_xmp(self.catalog, config)
        with recovery.writer(self.home, self.catalog):
            return write_xmp(self.catalog, config)

    def export_vectors(
        self, target: str | os.PathLike[str] | BinaryIO, where: ImageFilter | None = None
    ) -> int:
        """Write the published index's images (with ``where``: those that pass it) as an ``.npz``
        (``ids``, ``uris``, ``vectors``: the stored embeddings, ``model``: its identity as JSON) to a
        file name or a binary file; a file name is written whole or not at all. Returns the number
        of images."""
        import numpy as np

        from query.export import write_npz
        from query.tagging import corpus_matrix

        version = self.searcher.version()
        ids, xb = corpus_matrix(self.home, self.catalog, version)
        if where:
            keep = np.isin(ids, self.catalog.matching_ids(where))
            ids, xb = ids[keep], xb[keep]
        uris = {row[0]: row[1] for row in self.catalog.hit_rows()}
        arrays = (ids, [uris[int(i)] for i in ids], xb, version.identity.to_dict())
        if hasattr(target, "write"):
            write_npz(target, *arrays)
            return len(ids)
        path = Path(target)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with tmp.open("wb") as fh:
                write_npz(fh, *arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return len(ids)

    def export_rows(self, run: int | None = None, where: ImageFilter | None = None) -> list[dict[str, Any]]:
        """One dict per image that is not deleted (with ``where``: per indexed image that passes it):
        metadata and the tags of tag run ``run`` (default: the newest)."""
        from query.export import export_rows

        return export_rows(self.catalog, run, where)

    def status(self) -> dict[str, Any]:
        """Counts, model identity, the published index version and type, and ``problem``: why the
        catalog is not the index's (or the index cannot be read), else None."""
        counts = self.catalog.counts()
        out: dict[str, Any] = {
            "home": str(self.home.root),
            "database": Catalog.display_url(self.home.db_url),
            "indexed": counts["indexed"],
            "failed": counts["failed"],
            "deleted": counts["deleted"],
            "model": None,
            "index": None,
            "problem": None,
        }
        try:
            version = versions.current_version(self.home)
        except DamagedState as err:  # an unreadable pointer or manifest
            return out | {"problem": str(err)}
        except IndexNotFound:
            return out
        out["model"] = {k: version.manifest["model"][k] for k in ("model", "pretrained", "embed_dim", "key")}
        out["index"] = {
            "version": version.name,
            "type": version.manifest["index_type"],
            "count": version.manifest["count"],
            "created": version.manifest["created"],
            "engines": version.manifest.get("engines", []),  # what embedded its vectors (core.engines)
        }
        out["problem"] = integrity.catalog_problem(self.home, self.catalog, version)
        return out

    def check(self) -> dict[str, Any]:
        """Verify the home whole: hash every shard the catalog points into and every file of the
        published and previous index versions, and compare the catalog with the index. Returns
        ``ok``, ``damaged`` (``kind``, ``path``, ``problem``, ``repair`` each), ``notes`` and
        ``checked`` counts (see :func:`indexer.check.check_home`)."""
        return integrity.check_home(self.home, self.catalog)

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Index and tag runs, newest first."""
        return self.catalog.runs(limit)

    def failures(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Recorded failures (uri, stage, reason, run_id), newest first."""
        return self.catalog.failures(limit)
