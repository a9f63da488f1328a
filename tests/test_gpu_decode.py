"""JPEGs decoded where the model is (pipeline.gpu_decode), checked on CPU: torchvision decodes on
``device="cpu"`` with the same code path as on CUDA but libjpeg instead of nvJPEG.

Tolerances: the batch decoder resizes the full image once (torch's antialiased bicubic) where the
CPU path first reduces large JPEGs by libjpeg's scaled DCT and a box filter, so pixels agree to a
mean absolute difference under 1 level of 255 per image at the 224 pixels of real models, and
under 2.5 over the corpus at the tiny test model's 32 (up to 7 for grainy 1600 x 1200 photos);
the embeddings of both keep a cosine of at least 0.99.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.decode import DecodeError, decode_image, jpeg_header
from core.errors import InputError
from core.hashes import hamming, to_uint64
from core.models import ModelIdentity, load_model, parse_model_spec
from pipeline.entries import EntryDecoder, KnownHashes, decode_entries
from pipeline.gpu_decode import BatchDecoder, Encoded, Pending, geometry, nvjpeg_candidate, orient
from pipeline.handler import encode_pixels
from pipeline.inputs import FileEntry
from pipeline.job import PipelineConfig, settle_gpu_decode
from pipeline.preprocess import split_transform
from pipeline.stages import ChunkMeta, late_failures
from vistag import Archive
from vistag.synth import make_corpus
from vistag.synth.families import photo

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
VIT_224 = ModelIdentity("vit", None, 8, {"size": 224, "interpolation": "bicubic", "resize_mode": "shortest"})
ORIENTED = [(320, 240), (500, 375), (375, 500), (200, 150)]


def _jpeg(img: Image.Image, orientation: int = 1, **options: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes(), **options)
    return buf.getvalue()


def _mixed(folder: Path) -> list[bytes]:
    """Shapes JPEGs, photos of several sizes with orientations 1..8, grey and progressive JPEGs."""
    datas = [p.read_bytes() for p, _ in make_corpus(folder, 8, formats=("jpg",))]
    for i in range(8):
        datas.append(_jpeg(photo(i, ORIENTED[i % 4]), orientation=i + 1))
    for i, size in enumerate([(640, 480), (1600, 1200), (90, 400)]):
        datas += [_jpeg(photo(10 + i, size)), _jpeg(photo(20 + i, size).convert("L"))]
        datas.append(_jpeg(photo(30 + i, size), orientation=6, progressive=True))
    return datas


def _encoded(data: bytes) -> Encoded:
    header = jpeg_header(data)
    return Encoded(data, decode_image(data, draft_size=64).orientation, header.width * header.height)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return _mixed(tmp_path_factory.mktemp("mixed"))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_candidates_are_8_bit_huffman_jpegs_of_one_or_three_components():
    img = photo(1, (64, 48))
    plain = _jpeg(img)
    assert nvjpeg_candidate(plain) and nvjpeg_candidate(_jpeg(img.convert("L")))
    assert nvjpeg_candidate(_jpeg(img, progressive=True))
    sof = plain.index(b"\xff\xc0")
    twelve_bit = plain[: sof + 4] + b"\x0c" + plain[sof + 5 :]
    arithmetic = plain[:sof] + b"\xff\xc9" + plain[sof + 2 :]
    lossless = plain[:sof] + b"\xff\xc3" + plain[sof + 2 :]
    cmyk = io.BytesIO()
    img.convert("CMYK").save(cmyk, "JPEG")
    assert jpeg_header(cmyk.getvalue()).ids and len(jpeg_header(cmyk.getvalue()).ids) == 4
    for refused in (twelve_bit, arithmetic, lossless, cmyk.getvalue(), _png(img), b"", b"\xff\xd8\xff"):
        assert not nvjpeg_candidate(refused)


def test_candidates_pass_the_bounds_checks_first():
    from vistag.synth import hostile

    bomb = hostile.scan_bomb_jpeg(64, 64, 200)
    assert not nvjpeg_candidate(bomb)


def test_orientations_match_the_cpu_paths_upright_image():
    decoder = BatchDecoder(VIT_224, "cpu")
    img = photo(3, (60, 40))
    for orientation in range(1, 9):
        data = _jpeg(img, orientation)
        (image,) = decoder._decode_group([_encoded(data)])
        upright = orient(image, orientation).numpy().transpose(1, 2, 0)
        want = np.asarray(decode_image(data).image)
        assert upright.shape == want.shape, orientation
        assert np.abs(upright.astype(int) - want).mean() < 1, orientation
        got, failed = decoder.decode([_encoded(data)])
        assert not failed and np.abs(got[0].numpy().astype(int) - decoder.cpu_pixels(data)).mean() < 1


def test_a_corrupt_jpeg_fails_alone_and_the_cpu_takes_what_the_device_refuses():
    decoder = BatchDecoder(VIT_224, "cpu")
    good = [_jpeg(photo(i, (120, 90))) for i in range(3)]
    truncated = good[0][: len(good[0]) // 2]
    png = _png(photo(7, (100, 80)))
    items = [_encoded(good[0]), Encoded(truncated, 1, 10800), _encoded(good[1]), Encoded(png, 1, 8000)]
    pixels, failed = decoder.decode(items)
    assert failed == [1, 3]
    for i, data in [(0, good[0]), (2, good[1])]:
        assert np.abs(pixels[i].numpy().astype(int) - decoder.cpu_pixels(data)).mean() < 1
    cpu_rows = np.stack([decoder.cpu_pixels(good[2])] * 2)  # rows 0 and 3
    pending = Pending(cpu_rows, ((1, items[0]), (2, items[1]), (4, items[3])))
    merged, late = decoder.merge(pending)
    assert [row for row, _ in late] == [2] and "truncated" in late[0][1]
    assert merged.shape == (4, 3, 224, 224)
    np.testing.assert_array_equal(merged[0].numpy(), cpu_rows[0])
    np.testing.assert_array_equal(merged[2].numpy(), cpu_rows[1])
    np.testing.assert_array_equal(merged[3].numpy(), decoder.cpu_pixels(png))  # the CPU's pixels


def test_late_failures_leave_the_rows_and_renumber_the_rest():
    rows = tuple({"uri": u, "row": r} for u, r in [("a", 0), ("b", -1), ("c", 1), ("d", 2)])
    meta = late_failures(ChunkMeta(3, rows, ({"uri": "x", "stage": "read", "reason": "gone"},)), [(1, "bad")])
    assert [(r["uri"], r["row"]) for r in meta.rows] == [("a", 0), ("b", -1), ("d", 1)]
    assert meta.failures[-1] == {"uri": "c", "stage": "decode", "reason": "bad"} and len(meta.failures) == 2


def _cpu_path(datas: list[bytes], identity: ModelIdentity, folder: Path) -> np.ndarray:
    """(N, 3, H, W) pixels of ``datas`` through the read stage's own decoder (EntryDecoder)."""
    entries = []
    for i, data in enumerate(datas):
        path = folder / f"{i:03d}.jpg"
        path.write_bytes(data)
        entries.append(FileEntry(str(path), len(data), 0.0))
    outcomes, pixels = decode_entries(entries, EntryDecoder(identity).setup(KnownHashes()))
    assert isinstance(pixels, np.ndarray) and len(pixels) == len(datas), outcomes
    return pixels


def test_batch_decoder_pixels_and_embeddings_agree_with_the_cpu_path(mixed, tiny_model, tmp_path):
    model = load_model(parse_model_spec(tiny_model), "cpu")
    items = [_encoded(data) for data in mixed]
    for n, (identity, per_image, overall) in enumerate([(VIT_224, 1.0, 0.5), (model.identity, 8.0, 2.5)]):
        (tmp_path / str(n)).mkdir()
        want = _cpu_path(mixed, identity, tmp_path / str(n)).astype(int)
        got, failed = BatchDecoder(identity, "cpu").decode(items)
        assert not failed
        diff = np.abs(got.numpy().astype(int) - want).mean(axis=(1, 2, 3))
        assert diff.max() < per_image and diff.mean() < overall, diff.round(2)
    normalize = split_transform(model.identity).normalize
    xb = encode_pixels(model, got, normalize, 16, model.identity.embed_dim)
    ref = encode_pixels(model, want.astype(np.uint8), normalize, 16, model.identity.embed_dim)
    assert float(np.min(np.sum(xb * ref, axis=1))) >= 0.99


def test_deferred_jpegs_keep_the_keys_of_the_cpu_path(tmp_path, tiny_model):
    identity = load_model(parse_model_spec(tiny_model), "cpu").identity
    img = photo(5, (500, 375))
    files = {"a.jpg": _jpeg(img, 6), "b.png": _png(img), "c.jpg": _jpeg(img.convert("CMYK"))}
    entries = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        entries.append(FileEntry(str(tmp_path / name), len(data), 1.0))
    plain = [EntryDecoder(identity).setup(KnownHashes()).one(e) for e in entries]
    deferred = [EntryDecoder(identity, defer_jpeg=True).setup(KnownHashes()).one(e) for e in entries]
    assert isinstance(deferred[0][1], Encoded) and deferred[0][1].orientation == 6
    assert all(isinstance(d[1], np.ndarray) for d in deferred[1:])  # PNG and CMYK decoded here
    for (want, _), (got, _) in zip(plain, deferred, strict=True):
        assert (got.uri, got.sha256, got.width, got.height) == (
            want.uri,
            want.sha256,
            want.width,
            want.height,
        )
        assert hamming(to_uint64([got.phash]), to_uint64([want.phash]))[0] <= 4


def test_gpu_decode_is_settled_per_device_and_refused_off_cuda():
    config = PipelineConfig("w.jsonl", 1, "out", VIT_224)
    assert settle_gpu_decode(config, "cuda").gpu_decode is True
    assert settle_gpu_decode(config, "cpu").gpu_decode is False
    assert (
        settle_gpu_decode(
            PipelineConfig("w", 1, "o", VIT_224, beam_args=("--runner=dask",)), "cuda"
        ).gpu_decode
        is False
    )
    assert (
        settle_gpu_decode(PipelineConfig("w", 1, "o", VIT_224, gpu_decode=False), "cuda").gpu_decode is False
    )
    longest = ModelIdentity("l", None, 8, {"size": 224, "resize_mode": "longest"})
    assert (
        geometry(longest) is None
        and settle_gpu_decode(PipelineConfig("w", 1, "o", longest), "cuda").gpu_decode is False
    )
    with pytest.raises(InputError, match="CUDA"):
        settle_gpu_decode(PipelineConfig("w", 1, "o", VIT_224, gpu_decode=True), "cpu")


def test_cli_refuses_gpu_decode_without_cuda(cli, tmp_path, corpus, tiny_model):
    home = tmp_path / "home"
    result = cli(
        "index", corpus.root, "--home", home, "--model", tiny_model, "--device", "cpu", "--gpu-decode"
    )
    assert result.code == 2 and "CUDA" in result.err and len(result.err.strip().splitlines()) == 1
    assert not home.exists()


def _catalog(archive: Archive) -> tuple[dict[str, dict], dict[str, np.ndarray], list[tuple[str, str]]]:
    """uri -> catalog row, uri -> embedding, and (uri, stage) of the failures, of the current version."""
    from indexer import versions
    from query.tagging import corpus_matrix

    ids, xb = corpus_matrix(archive.home, archive.catalog, versions.current_version(archive.home))
    rows = {r["id"]: r for r in archive.catalog.images(ids.tolist(), status=None)}
    vectors = {rows[i]["uri"]: x for i, x in zip(ids.tolist(), xb, strict=True)}
    failures = sorted((f["uri"], f["stage"]) for f in archive.failures())
    return {r["uri"]: r for r in rows.values()}, vectors, failures


def test_index_with_the_gpu_decode_path_on_cpu_matches_the_normal_path(
    tmp_path, corpus, tiny_model, monkeypatch
):
    """The whole job with JPEGs decoded by the handler (forced onto the CPU): the same catalog rows,
    failures and (to cosine 0.99) embeddings as the normal path; nvJPEG refusals fall back silently."""
    img = photo(9, (500, 375))
    extra = {
        "rot.jpg": _jpeg(img, 6),
        "grey.jpg": _jpeg(img.convert("L")),
        "prog.jpg": _jpeg(img, progressive=True),
    }
    cmyk = io.BytesIO()
    img.convert("CMYK").save(cmyk, "JPEG")
    extra |= {"cmyk.jpg": cmyk.getvalue(), "odd.jpg": _png(img)}  # a PNG named .jpg: not a candidate
    for name, data in extra.items():
        (corpus.root / name).write_bytes(data)
    shipped: list[int] = []
    decode = BatchDecoder.decode
    monkeypatch.setattr(
        BatchDecoder, "decode", lambda self, items: shipped.append(len(items)) or decode(self, items)
    )
    runs = {}
    threads = ("--direct_num_workers=2", "--direct_running_mode=multi_threading")
    for name, gpu_decode, pool in [("cpu", False, 0), ("gpu", True, 0), ("pool", True, 2)]:
        if gpu_decode:
            monkeypatch.setattr("pipeline.job.GPU_DECODE_DEVICES", ("cuda", "cpu"))
        with Archive(tmp_path / name, device="cpu") as archive:
            archive.index(
                [corpus.root],
                model=tiny_model,
                chunk_size=16,
                gpu_decode=gpu_decode,
                decode_processes=pool,
                beam_args=threads if pool else (),
            )
            runs[name] = _catalog(archive)
    rows, vectors, failures = runs["cpu"]
    jpegs = [u for u in rows if nvjpeg_candidate(Path(u).read_bytes())]
    assert sum(shipped) == 2 * len(jpegs) and len(jpegs) > 10 and len(rows) > len(jpegs)  # PNG, CMYK: CPU
    assert len(failures) == len(corpus.bad)
    for name in ("gpu", "pool"):
        _same_catalog(runs["cpu"], runs[name])


def _same_catalog(cpu_run: tuple, gpu_run: tuple) -> None:
    (rows, vectors, failures), (gpu_rows, gpu_vectors, gpu_failures) = cpu_run, gpu_run
    assert gpu_failures == failures
    assert gpu_rows.keys() == rows.keys() == vectors.keys() == gpu_vectors.keys()
    for uri, row in rows.items():
        got = gpu_rows[uri]
        assert [got[k] for k in ("sha256", "width", "height", "taken")] == [
            row[k] for k in ("sha256", "width", "height", "taken")
        ]
        assert hamming(to_uint64([got["phash"]]), to_uint64([row["phash"]]))[0] <= 4
        assert float(np.dot(gpu_vectors[uri], vectors[uri])) >= 0.99, uri


def test_an_image_neither_device_nor_cpu_decodes_is_a_decode_failure_in_its_shard(
    tmp_path, tiny_model, monkeypatch
):
    """A failure found in the handler lands in the shard's failures; the rows after it keep their
    own embeddings."""
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.jpg").write_bytes(_jpeg(photo(40 + i, (120, 90))))
    broken = (folder / "2.jpg").read_bytes()
    group, pixels = BatchDecoder._decode_group, BatchDecoder.cpu_pixels

    def refuse(self, items):
        return [
            None if item.data == broken else image
            for item, image in zip(items, group(self, items), strict=True)
        ]

    def cpu_refuses(self, data):
        if data == broken:
            raise DecodeError("refused for the test")
        return pixels(self, data)

    monkeypatch.setattr(BatchDecoder, "_decode_group", refuse)
    monkeypatch.setattr(BatchDecoder, "cpu_pixels", cpu_refuses)
    monkeypatch.setattr("pipeline.job.GPU_DECODE_DEVICES", ("cuda", "cpu"))
    runs = {}
    for name, gpu_decode in [("cpu", False), ("gpu", True)]:
        with Archive(tmp_path / name, device="cpu") as archive:
            result = archive.index([folder], model=tiny_model, gpu_decode=gpu_decode)
            runs[name] = (result.embedded, result.failed, *_catalog(archive))
    assert runs["cpu"][:2] == (5, 0) and runs["gpu"][:2] == (4, 1)
    uri = str(folder / "2.jpg")
    assert runs["gpu"][4] == [(uri, "decode")]
    for other, x in runs["gpu"][3].items():
        assert float(np.dot(x, runs["cpu"][3][other])) >= 0.99


@cuda
def test_nvjpeg_pixels_and_embeddings_agree_with_the_cpu_path(mixed, tiny_model, tmp_path):
    model = load_model(parse_model_spec(tiny_model), "cpu")
    items = [_encoded(data) for data in mixed]
    for n, identity in enumerate([VIT_224, model.identity]):
        (tmp_path / str(n)).mkdir()
        want = _cpu_path(mixed, identity, tmp_path / str(n))
        got, failed = BatchDecoder(identity, "cuda").decode(items)
        assert not failed and got.device.type == "cuda"
        diff = np.abs(got.cpu().numpy().astype(int) - want).mean(axis=(1, 2, 3))
        assert diff.mean() < (1.5 if n == 0 else 3.0), diff.round(2)  # nvJPEG: its own IDCT and upsampling
    normalize = split_transform(model.identity).normalize
    xb = encode_pixels(model, got.cpu(), normalize, 16, model.identity.embed_dim)
    ref = encode_pixels(model, want, normalize, 16, model.identity.embed_dim)
    assert float(np.min(np.sum(xb * ref, axis=1))) >= 0.99
    _, failed = BatchDecoder(VIT_224, "cuda").decode([items[0], Encoded(_png(photo(1, (64, 48))), 1, 3072)])
    assert failed == [1]


@cuda
def test_index_on_cuda_decodes_jpegs_on_the_gpu_by_default(tmp_path, corpus, tiny_model, monkeypatch):
    shipped: list[int] = []
    decode = BatchDecoder.decode
    monkeypatch.setattr(
        BatchDecoder, "decode", lambda self, items: shipped.append(len(items)) or decode(self, items)
    )
    runs = {}
    for device in ("cpu", "cuda"):
        with Archive(tmp_path / device, device=device) as archive:
            archive.index([corpus.root], model=tiny_model, chunk_size=16)
            runs[device] = _catalog(archive)
    assert sum(shipped) == sum(nvjpeg_candidate(p.read_bytes()) for p in corpus.good) > 0
    _same_catalog(runs["cpu"], runs["cuda"])


def test_late_failures_are_counted_with_the_read_stages_failures_in_the_beam_metric(tmp_path):
    """A row neither the device nor the CPU decoded at inference is stored as a failure and counted
    in ``images_failed`` (summed over the steps), not lost from the run's figures."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import PredictionResult

    from pipeline import shards
    from pipeline.handler import Embedded
    from pipeline.stages import NAMESPACE, WriteShardFn, shard_name

    identity = ModelIdentity("tiny", None, 4, {"size": 32})
    rows = tuple({"uri": f"/p/{c}.jpg", "sha256": c * 64, "row": i} for i, c in enumerate("abc"))
    meta = ChunkMeta(0, rows, ({"uri": "/p/x.jpg", "stage": "read", "reason": "gone"},))
    done = PredictionResult(None, Embedded(np.ones((2, 4), np.float32), ((1, "truncated"),)), None)
    pipeline = beam.Pipeline()
    _ = pipeline | beam.Create([(meta, done)]) | beam.ParDo(WriteShardFn(str(tmp_path), identity, "t"))
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name("images_failed"))
    assert sum(c.committed for c in counters["counters"]) == 1
    shard = shards.read_shard(str(tmp_path), shard_name("t", 0))
    assert [m["uri"] for m in shard.meta] == ["/p/a.jpg", "/p/c.jpg"]
    assert {f["uri"] for f in shard.failures} == {"/p/x.jpg", "/p/b.jpg"}
