"""One index run: list, plan, embed the work through the Beam job, apply shards, build, publish."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core import engines
from core.decode import DEFAULT_MAX_PIXELS
from core.errors import DamagedIndex, EmptyCorpus, IndexNotFound, InputError, PipelineError
from core.faults import crash_point
from core.models import ModelIdentity, ModelSpec, model_identity, parse_model_spec, pick_device
from indexer import build, check, faiss_gpu, vectors, versions
from indexer.catalog import Catalog
from indexer.choice import choose_index
from indexer.home import Home
from indexer.lock import WriterLock
from indexer.recall import tune_index
from indexer.recovery import apply_shards, recover
from indexer.reindex import ReindexPlan, plan_reindex
from pipeline import shards
from pipeline.entries import known_lines
from pipeline.inputs import FileEntry, expand_inputs
from pipeline.runners import check_beam_args
from pipeline.worklist import DEFAULT_CHUNK_SIZE, write_worklist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexConfig:
    """Options of one index run."""

    inputs: tuple[str, ...]
    model: str | None = None
    pretrained: str | None = None
    device: str | None = None
    batch_size: int | None = None  # images per forward; None: 256 on a GPU, 32 on CPU
    decode_processes: int | None = None  # None: a pool of one per core when the in-process runner feeds a GPU
    shard_size: int = 4096
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    index_type: str | None = None
    memory_budget: int | None = None
    latency_target_ms: float | None = None  # exact search while one query is estimated within it
    index_storage: str = "auto"  # "auto", "memory" or "ondisk" (see indexer.choice)
    shards_root: str | None = None
    dry_run: bool = False
    # read unchanged images again for what the catalog keeps of them: True those it does not
    # describe yet, "all" every one (after an upgrade that reads more)
    refresh_metadata: bool | str = False
    progress: bool = False
    beam_args: tuple[str, ...] = field(default_factory=tuple)
    engine: str | None = None  # auto, torch or openvino; None: $VISTAG_ENGINE, else auto
    gpu_decode: bool | None = (
        None  # JPEGs decoded on the CUDA GPU; None: when the in-process runner feeds one
    )


@dataclass(frozen=True)
class IndexResult:
    """What a run did. ``plan`` is always set; the rest is empty for a dry run."""

    plan: ReindexPlan
    run_id: int | None = None
    embedded: int = 0
    reused: int = 0
    failed: int = 0
    deleted: int = 0
    index_version: str | None = None
    index_count: int | None = None
    tag_runs: tuple[int, ...] = ()
    index_plan: str | None = None
    model_change: str | None = None  # what changes when the run's model is not the published index's

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "plan"}
        return out | {"plan": self.plan.counts()}


def run_index(
    home: Home, config: IndexConfig, then: Callable[[Catalog, IndexResult], IndexResult] | None = None
) -> IndexResult:
    """Run one index job in ``home`` under the writer lock; ``then`` (the catalog, the result) runs
    under the same lock afterwards (tagging the new images), and its result is returned."""
    engine, device = engines.check(config.engine, config.device)  # an engine that cannot run: no home made
    config = replace(config, engine=engine, device=device)
    if not (
        config.refresh_metadata is True
        or config.refresh_metadata is False
        or config.refresh_metadata == "all"
    ):
        raise InputError(f'refresh_metadata must be False, True or "all", not {config.refresh_metadata!r}')
    if config.gpu_decode:  # refused before any work, like the engine
        from pipeline.job import check_gpu_decode

        check_gpu_decode(True, pick_device(device))
    home.ensure()
    with WriterLock(home.lock_path):
        catalog = Catalog(home.db_url)
        try:
            with catalog.writer_lock():
                result = _run_locked(home, catalog, config)
                return then(catalog, result) if then is not None else result
        finally:
            catalog.close()


def _run_locked(home: Home, catalog: Catalog, config: IndexConfig) -> IndexResult:
    faiss_on_gpu = faiss_gpu.use_gpu()  # a bad VISTAG_FAISS_GPU stops the run before any work
    check_beam_args(config.beam_args)  # so do unknown Beam options,
    listing = expand_inputs(config.inputs)  # and missing inputs, before any model work
    spec = archive_model(home, config)
    identity = model_identity(spec, home.model_identities, record=not config.dry_run)
    change = model_change(home, identity)
    model_id = catalog.model_id(identity)
    if not config.dry_run:
        recover(home, catalog)
        check.repair(home, catalog, identity, model_id)
    plan = plan_reindex(
        listing, catalog.image_states(), set(catalog.known_hashes(model_id)), config.refresh_metadata
    )
    if config.dry_run:
        live = len(plan.unchanged) + len(plan.work) - len(plan.missing)
        choice = choose_index(
            max(live, 0),
            identity.embed_dim,
            memory_budget=config.memory_budget,
            override=config.index_type,
            storage=config.index_storage,
            latency_ms=config.latency_target_ms,
        )
        where = f"; FAISS on {faiss_gpu.gpu_count()} GPU(s)" if faiss_on_gpu and not choice.exact else ""
        return IndexResult(plan, index_plan=choice.describe() + where, model_change=change)
    if not listing.entries and not catalog.image_states():
        raise EmptyCorpus(f"no image files found in {', '.join(config.inputs)}")
    run_id = catalog.start_run("index", model_id, {"inputs": config.inputs, "model": identity.model})
    home.remember(spec.open_clip_name, spec.pretrained)
    crash_point("planned")
    try:
        result = replace(
            _execute(home, catalog, config, identity, model_id, plan, run_id), model_change=change
        )
    except BaseException as err:
        catalog.finish_run(run_id, "failed", plan.counts(), message=f"{type(err).__name__}: {err}")
        raise
    counts = plan.counts() | {"embedded": result.embedded, "reused": result.reused, "failed": result.failed}
    catalog.finish_run(run_id, "ok", counts)
    return result


def archive_model(home: Home, config: IndexConfig) -> ModelSpec:
    """The run's model: ``config.model``, else the one the home remembers (else, for a home made by
    an older vistag, the published index's), else the default; never a default over the archive's."""
    model, pretrained = config.model, config.pretrained
    known = None
    if model is None:
        model, remembered = home.settings.model, home.settings.pretrained
        if model is None:
            with contextlib.suppress(IndexNotFound):
                published = versions.current_version(home).identity
                model, remembered = published.model, published.pretrained
        elif remembered is not None:  # parsed when it was remembered
            known = ModelSpec(None, model, remembered)
        pretrained = pretrained or remembered
    return parse_model_spec(model, pretrained, known)


def model_change(home: Home, identity: ModelIdentity) -> str | None:
    """A sentence when ``identity`` is not the published index's model, else None."""
    try:
        published = versions.current_version(home).identity
    except IndexNotFound:
        return None
    if published.key == identity.key:
        return None
    return (
        f"model changes from {_model_name(published)} to {_model_name(identity)}: every image is embedded "
        "again and the new index replaces the current one"
    )


def _model_name(identity: ModelIdentity) -> str:
    return identity.model + (f" ({identity.pretrained})" if identity.pretrained else "")


def _execute(
    home: Home,
    catalog: Catalog,
    config: IndexConfig,
    identity: ModelIdentity,
    model_id: int,
    plan: ReindexPlan,
    run_id: int,
) -> IndexResult:
    embedded = reused = failed = 0
    if plan.work:
        folder = home.shard_dir(identity.key, run_id, config.shards_root)
        catalog.update_run_params(run_id, {"shards": folder})
        _embed(home, catalog, config, identity, model_id, plan.work, folder)
        embedded, reused, failed = apply_shards(home, catalog, folder, model_id, run_id, plan.work)
    if plan.missing:
        catalog.add_failures([{"uri": u, "stage": "list", "reason": r} for u, r in plan.missing], run_id)
        catalog.upsert_images([{"uri": u, "status": "failed"} for u, _ in plan.missing], run_id)
        failed += len(plan.missing)
    deleted = catalog.set_status(plan.deleted, "deleted", run_id)
    crash_point("deleted")
    version = _maybe_rebuild(home, catalog, identity, model_id, config, run_id)
    return IndexResult(
        plan,
        run_id,
        embedded,
        reused,
        failed,
        deleted,
        version.name if version else None,
        int(version.manifest["count"]) if version else None,
    )


def _embed(
    home: Home,
    catalog: Catalog,
    config: IndexConfig,
    identity: ModelIdentity,
    model_id: int,
    work: Sequence[FileEntry],
    folder: str,
) -> None:
    # the Beam job (and with RunInference, torch) is imported only for a run with work to do: a
    # nightly re-index of an unchanged archive does without both (seconds of imports)
    from pipeline.job import KNOWN_HASHES_FILE, PipelineConfig, run_config

    worklist = write_worklist(folder, work)
    known_file = shards.join(folder, KNOWN_HASHES_FILE)
    shards.write_text(known_file, known_lines(catalog.described_hashes(model_id)))
    pipeline_config = PipelineConfig(
        worklist=worklist,
        total=len(work),
        output=str(folder),
        identity=identity,
        batch_size=config.batch_size,
        shard_size=config.shard_size,
        max_pixels=config.max_pixels,
        device=config.device,
        engine=config.engine or "auto",
        engine_cache=str(engines.cache_root(home.root)),
        chunk_size=config.chunk_size,
        decode_processes=config.decode_processes,
        gpu_decode=config.gpu_decode,
        known_hashes_file=str(known_file),
        progress=config.progress,
        beam_args=config.beam_args,
    )
    try:
        run_config(pipeline_config)
    except Exception as err:  # Beam wraps worker errors in runner-specific types
        raise PipelineError(f"embedding pipeline failed: {_root_cause(err)}") from err


def _root_cause(err: BaseException) -> str:
    """The innermost cause's message, on one line (Beam adds pages of context around it)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    text = lines[-1] if lines else ""
    return f"{type(err).__name__}: {text}"[:500]


def _maybe_rebuild(
    home: Home, catalog: Catalog, identity: ModelIdentity, model_id: int, config: IndexConfig, run_id: int
) -> versions.IndexVersion | None:
    """Build and publish a new version unless the published one already holds exactly the catalog
    (and was built from it, and is intact: a damaged one is rebuilt)."""
    state = catalog.live_state(model_id)
    discard: Path | None = None  # the published version if damaged or another catalog's: not kept as previous
    try:
        current = versions.current_version(home)
    except DamagedIndex as err:  # an unreadable manifest (or pointer)
        current, discard = None, Path(err.path) if err.path and Path(err.path).is_dir() else None
    except IndexNotFound:
        current = None
    forced_storage = (
        config.index_storage != "auto" and current is not None and current.storage != config.index_storage
    )
    serves = current is not None and check.still_serves(current, catalog)  # hashed unless stamped
    if current is not None and not serves:
        discard = current.path
    unchanged = serves and current.manifest.get("catalog_state") == state
    if unchanged and not config.index_type and not forced_storage:
        return None
    locations = catalog.vector_locations(model_id)
    choice = choose_index(
        len(locations),
        identity.embed_dim,
        memory_budget=config.memory_budget,
        override=config.index_type,
        storage=config.index_storage,
        latency_ms=config.latency_target_ms,
    )
    staging = versions.new_staging(home, identity) if choice.ondisk else None  # becomes the version folder
    index = build.build_from_store(home, locations, identity.embed_dim, choice, folder=staging)
    search: dict[str, Any] = {"plan": choice.describe(), "params": choice.search, "rerank": choice.rerank}
    if not choice.exact and len(locations):
        tuning = tune_index(home, catalog, identity, model_id, locations, index, choice)
        params = {k: v for k, v in tuning.search.items() if k != "rerank"}
        search |= {
            "params": params,
            "rerank": tuning.search.get("rerank", 0),
            "text_recall_at_10": tuning.text_recall,
            "image_recall_at_10": tuning.image_recall,
            "recall_queries": tuning.queries,
        }
    version = versions.write_version(
        home,
        identity,
        index,
        choice.factory,
        run_id,
        catalog_state=state,
        search=search,
        locations=locations,
        catalog_id=catalog.catalog_id(),
        hits=catalog.hit_rows(),
        engines=vectors.engines_of(home, locations),
    )
    catalog.add_index_version(
        model_id, home.relative(version.path), choice.factory, int(index.ntotal), run_id
    )
    crash_point("version-written")
    versions.publish(home, version)
    if discard is not None:
        shutil.rmtree(discard, ignore_errors=True)
    crash_point("published")
    return version
