"""The home directory: where the catalog, shards and index versions of one archive live.

Layout::

    HOME/catalog.db                      SQLite catalog (unless a database URL is given)
    HOME/shards/<model key>/run-<id>/    embedding shards written by each pipeline run
    HOME/index/<model key>/v<NNNNNN>/    index versions (index.faiss + manifest.json)
    HOME/index/CURRENT                   pointer to the published version, replaced atomically
    HOME/lock                            held (flock) by the one writer
    HOME/models/identities.json          model identities by spec and weights (see core.models.model_identity)
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import uris
from core.errors import InputError

ENV_HOME = "VISTAG_HOME"
ENV_DB = "VISTAG_DB"
DEFAULT_HOME = "~/.vistag"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Settings:
    """What a home remembers between commands (``HOME/settings.json``): its catalog database
    (``db``: a URL without its password; None: the home's own SQLite file) and its model, so a
    command that leaves them out uses the archive's, never a default."""

    db: str | None = None
    db_password_removed: bool = False
    model: str | None = None
    pretrained: str | None = None
    known: bool = field(default=False, compare=False)  # read from a file (False: a new or older home)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k != "known"}
        return json.dumps({"format_version": 1} | data, indent=1)


@dataclass(frozen=True)
class Home:
    """Paths inside one vistag home; ``db_url`` is the catalog's SQLAlchemy URL; ``settings``
    what the home remembered when it was resolved."""

    root: Path
    db_url: str
    settings: Settings = field(default_factory=Settings, compare=False)

    @classmethod
    def resolve(
        cls, home: str | os.PathLike[str] | None = None, db_url: str | None = None, *, change_db: bool = False
    ) -> Home:
        """``home`` or $VISTAG_HOME or ~/.vistag. The catalog: ``db_url`` or $VISTAG_DB, else the
        database the home remembers, else HOME/catalog.db. A database other than the remembered
        one is an :class:`InputError` unless ``change_db`` (a home keeps one catalog)."""
        root = Path(home or os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser().resolve()
        settings = read_settings(root)
        default = f"sqlite:///{root / 'catalog.db'}"
        given = normalize_db_url(db_url or os.environ.get(ENV_DB) or "", root) or None
        remembered = (settings.db or default) if settings.known else None
        if given is None:
            return cls(root, remembered or default, settings)
        if (
            remembered is not None
            and not change_db
            and _without_password(given) != _without_password(remembered)
        ):
            raise InputError(
                f"this home's catalog is {_without_password(remembered)}, not {_without_password(given)}: a home keeps "
                "one catalog (use another --home, or move this one with `vistag index PATH --db URL --change-db`)"
            )
        return cls(root, given, settings)

    def remember(self, model: str | None = None, pretrained: str | None = None) -> Settings:
        """Record this home's database and ``model`` in ``HOME/settings.json`` (atomically, readable
        by the owner only: a database URL names a server and a user)."""
        own = self.db_url == f"sqlite:///{self.root / 'catalog.db'}"
        bare = None if own else _without_password(self.db_url)
        settings = Settings(bare, not own and bare != self.db_url, model, pretrained, known=True)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{SETTINGS_FILE}.tmp-{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(settings.to_json())
        os.replace(tmp, self.root / SETTINGS_FILE)
        return settings

    def is_archive(self) -> bool:
        """Whether this folder holds a vistag archive (made by ``index``), not only a path."""
        return any((self.root / name).exists() for name in (SETTINGS_FILE, "catalog.db", "index", "shards"))

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
        if shards_root and uris.is_remote(shards_root):
            return f"{shards_root.rstrip('/')}/{model_key}/run-{run_id:06d}"
        root = Path(shards_root).expanduser().resolve() if shards_root else self.root / "shards"
        return str(root / model_key / f"run-{run_id:06d}")

    def relative(self, path: str | Path) -> str:
        """Paths stored in the catalog are relative to the home, so a home can be moved; URIs
        and paths outside the home are stored as they are."""
        if uris.is_remote(str(path)):
            return str(path)
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def absolute(self, stored: str) -> str:
        if uris.is_remote(stored) or Path(stored).is_absolute():
            return stored
        return str(self.root / stored)


def read_settings(root: Path) -> Settings:
    """The settings a home remembers; empty ones for a new home or one made by an older vistag."""
    try:
        data = json.loads((root / SETTINGS_FILE).read_text())
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {root / SETTINGS_FILE}: {err}") from err
    fields = ("db", "db_password_removed", "model", "pretrained")
    return Settings(**{k: data.get(k) for k in fields if k in data}, known=True)


def normalize_db_url(url: str, root: Path | None = None) -> str:
    """``url`` as SQLAlchemy takes it: ``postgres://`` (Heroku, libpq) and a bare ``postgresql://``
    use psycopg 3 (installed with vistag's postgres extra; psycopg2 is used when only it is there);
    a relative SQLite path is made absolute. Empty stays empty."""
    url = url.strip()
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        import importlib.util

        driver = (
            "psycopg2"
            if importlib.util.find_spec("psycopg2") and not importlib.util.find_spec("psycopg")
            else "psycopg"
        )
        return f"postgresql+{driver}://{rest}"
    if (
        sep
        and scheme.startswith("sqlite")
        and rest.startswith("/")
        and not rest.startswith("//")
        and rest != "/"
    ):
        path = rest[1:]  # sqlite:///relative/path (three slashes) -> absolute
        if path and not path.startswith(":memory:") and not path.startswith("file:"):
            return f"{scheme}:///{Path(path).expanduser().resolve()}"
    return url


def _without_password(url: str) -> str:
    """``url`` with any password left out (for comparing, showing and remembering)."""
    from sqlalchemy.engine import URL, make_url

    try:
        u = make_url(url)
        bare = URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query)
        return bare.render_as_string(hide_password=False)
    except Exception:  # not a URL: the catalog reports that when it opens it
        return url
