"""The home directory: where the catalog, shards and index versions of one archive live.

Layout::

    HOME/catalog.db                      SQLite catalog (unless a database URL is given)
    HOME/shards/<model key>/run-<id>/    embedding shards written by each pipeline run
    HOME/index/<model key>/v<NNNNNN>/    index versions (index.faiss + manifest.json)
    HOME/index/CURRENT                   pointer to the published version, replaced atomically
    HOME/lock                            held (flock) by the one writer
    HOME/models/identities.json          model identities by spec and weights (see vistag.models.model_identity)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "VISTAG_HOME"
DEFAULT_HOME = "~/.vistag"


@dataclass(frozen=True)
class Home:
    """Paths inside one vistag home; ``db_url`` is the catalog's SQLAlchemy URL."""

    root: Path
    db_url: str

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None, db_url: str | None = None) -> Home:
        """``home`` or $VISTAG_HOME or ~/.vistag; the catalog defaults to HOME/catalog.db."""
        root = Path(home or os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser().resolve()
        return cls(root, db_url or f"sqlite:///{root / 'catalog.db'}")

    def ensure(self) -> Home:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def index_root(self) -> Path:
        return self.root / "index"

    @property
    def current_pointer(self) -> Path:
        return self.index_root / "CURRENT"

    @property
    def model_identities(self) -> Path:
        """Identities of models used here, so a run with nothing to embed builds no model."""
        return self.root / "models" / "identities.json"

    @property
    def lock_path(self) -> Path:
        return self.root / "lock"

    def shard_dir(self, model_key: str, run_id: int, shards_root: str | None = None) -> str:
        """Shard folder of one run: under HOME/shards, or under ``shards_root`` (any Beam
        filesystem URI, e.g. ``gs://bucket/vistag-shards`` for workers of a remote runner)."""
        if shards_root and "://" in shards_root:
            return f"{shards_root.rstrip('/')}/{model_key}/run-{run_id:06d}"
        root = Path(shards_root).expanduser().resolve() if shards_root else self.root / "shards"
        return str(root / model_key / f"run-{run_id:06d}")

    def relative(self, path: str | Path) -> str:
        """Paths stored in the catalog are relative to the home, so a home can be moved; URIs
        and paths outside the home are stored as they are."""
        if "://" in str(path):
            return str(path)
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def absolute(self, stored: str) -> str:
        if "://" in stored or Path(stored).is_absolute():
            return stored
        return str(self.root / stored)
