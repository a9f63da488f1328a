"""The corrections part of :class:`vistag.api.Archive`: confirming and rejecting labels, importing,
listing and withdrawing corrections, and choosing the images worth reviewing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.errors import NotFound
from query import corrections
from query.vocab import Label

if TYPE_CHECKING:
    from indexer.catalog import Catalog
    from indexer.home import Home
    from query.scoring import TagConfig
    from query.search import Searcher

Image = int | str | os.PathLike[str]


class CorrectionMethods:
    """Mixed into :class:`vistag.api.Archive`."""

    home: Home
    catalog: Catalog
    searcher: Searcher

    def confirm(self, images: Image | Sequence[Image], label: str) -> list[dict[str, Any]]:
        """Confirm ``label`` for ``images`` (catalog ids, paths or URIs of indexed images; one or a
        list): the correction follows each image's content through moves, copies and re-indexing.
        Every image is resolved before anything is written (:class:`NotFound` else). Per image
        ``id`` (of the correction), ``state`` (added, replaced, unchanged), ``image``, ``uri``,
        ``label``, ``verdict``, ``source``."""
        return corrections.confirm(self.catalog, _listed(images), label)

    def reject(self, images: Image | Sequence[Image], label: str) -> list[dict[str, Any]]:
        """Reject ``label`` for ``images``; as :meth:`confirm`."""
        return corrections.reject(self.catalog, _listed(images), label)

    def import_corrections(self, csv_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Record the corrections of a CSV of ``uri_or_id,label[,yes|no]`` rows (default yes; a
        header row allowed; relative paths from the CSV's folder). Every row is checked first: a bad
        one is an :class:`InputError` naming its line, and nothing is written."""
        return corrections.import_csv(self.catalog, csv_path)

    def corrections_from_keywords(self, labels: str | Sequence[str | Label]) -> list[dict[str, Any]]:
        """Confirm each label (parsed as :meth:`tag` parses them) for the indexed images that have
        it among their own keywords (source ``keywords``); a person's corrections are kept."""
        from query.vocab import parse_vocabulary

        return corrections.from_keywords(self.catalog, [x.name for x in parse_vocabulary(labels)])

    def corrections(
        self, label: str | None = None, *, withdrawn: bool = False, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Corrections, newest first (with ``withdrawn`` also those taken back or replaced); each
        ``id``, ``sha256``, ``label``, ``verdict``, ``source``, ``uri`` (where the image was when
        corrected), ``created``, ``withdrawn`` and ``images`` (the indexed images with that content
        now: ``id`` and ``uri`` each)."""
        return corrections.listing(self.catalog, label, withdrawn=withdrawn, limit=limit)

    def withdraw_corrections(self, ids: int | Sequence[int]) -> dict[str, list[int]]:
        """Withdraw corrections by id: ``withdrawn`` and ``already`` (withdrawn before); an unknown
        id is :class:`NotFound` and nothing is written."""
        return corrections.withdraw(self.catalog, [ids] if isinstance(ids, int) else list(ids))

    def review(
        self, labels: str | Sequence[str | Label] | None = None, n: int = 20, method: str = "zeroshot"
    ) -> list[dict[str, Any]]:
        """The ``n`` images whose confirmation or rejection would help most (see
        :mod:`query.review`): ``id``, ``uri``, ``label``, ``confidence``, ``rank`` each. ``labels``
        default to the newest finished tag run's (:class:`NotFound` when there is none)."""
        from query.review import review

        return review(self.home, self.catalog, self.searcher, self._review_config(labels, method), n)

    def _review_config(self, labels: str | Sequence[str | Label] | None, method: str) -> TagConfig:
        from query.scoring import TagConfig
        from query.tagruns import tag_run
        from query.vocab import SHORT_TEMPLATES, parse_vocabulary, recorded_label

        if labels is not None:
            return TagConfig(tuple(parse_vocabulary(labels)), method, templates=SHORT_TEMPLATES)
        try:
            params = tag_run(self.catalog, None)["params"]
        except NotFound:
            raise NotFound("no tag run yet: pass --labels, or run `vistag tag --labels ...` first") from None
        vocabulary = tuple(recorded_label(x) for x in params.get("vocabulary") or params["labels"])
        templates = tuple(params.get("templates") or SHORT_TEMPLATES)
        return TagConfig(vocabulary, method, templates=templates)


def _listed(images: Image | Sequence[Image]) -> list[Image]:
    return [images] if isinstance(images, int | str | os.PathLike) else list(images)
