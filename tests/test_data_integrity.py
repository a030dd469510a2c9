"""Data integrity of the Omniglot reader: verified local archives, a checksummed decoded
cache, and images whose headers claim absurd sizes (Chapter 2)."""
import hashlib
import io
import os
import shutil
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlbook.data import omniglot
from mlbook.data.omniglot import ARCHIVES, decode_image, load_omniglot, read_lake_runs, verify_archive

from omniglot_support import SHARED, SMALL, isolated, needs_shared  # noqa: F401 (isolated: autouse)
SMALL1 = SMALL[0]


def _drawing(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.full((105, 105), 255, dtype=np.uint8)
    r, c = rng.integers(10, 80, size=2)
    pixels[r:r + 20, c:c + 4] = 0
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _archive(path: Path, characters=3, drawers=20, replace=None) -> Path:
    """A small zip in the release's layout; ``replace`` maps a member name to other bytes."""
    replace = replace or {}
    with zipfile.ZipFile(path, "w") as archive:
        for c in range(1, characters + 1):
            for d in range(1, drawers + 1):
                name = f"x/Latin/character{c:02d}/{1000 + c}_{d:02d}.png"
                archive.writestr(name, replace.get(name, _drawing(100 * c + d)))
    return path


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG (correct CRCs) whose IHDR claims ``width`` x ``height`` grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".part"))] if folder.exists() else []


# -- 1. local archives with a release name are verified, once ---------------------------------
@needs_shared
def test_real_archives_verify_once_and_the_hash_is_remembered(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    assert verify_archive(SHARED / SMALL1, cache) == ARCHIVES[SMALL1]
    assert (cache / omniglot._HASH_RECORD).is_file() and not _leftovers(cache)
    first = load_omniglot([SHARED / SMALL1], data_dir=cache)
    assert first.images.shape == (136, 20, 28, 28)

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(omniglot, "_md5", no_hashing)
    monkeypatch.setattr(omniglot, "decode_image", no_decoding)
    # Found by name through MLBOOK_OMNIGLOT: verified from the record, read from the cache.
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(SHARED))
    again = load_omniglot([SMALL1], data_dir=cache)
    assert torch.equal(again.images, first.images) and again.characters == first.characters


@needs_shared
def test_corrupted_local_archive_is_refused(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    data = bytearray((SHARED / SMALL1).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside a member: the zip directory is still fine
    copy = tmp_path / "elsewhere" / SMALL1
    copy.parent.mkdir()
    copy.write_bytes(bytes(data))
    actual = hashlib.md5(bytes(data)).hexdigest()
    message = rf"{SMALL1}.* has MD5 {actual}, but the release's {SMALL1} has MD5 {ARCHIVES[SMALL1]}"
    with pytest.raises(ValueError, match=message):
        load_omniglot([copy], data_dir=cache)
    # The same file found by name, in the data folder or through MLBOOK_OMNIGLOT.
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(copy.parent))
    with pytest.raises(ValueError, match=message):
        load_omniglot([SMALL1], data_dir=cache, download=False)
    cache.mkdir(exist_ok=True)
    shutil.copyfile(copy, cache / SMALL1)
    with pytest.raises(ValueError, match=message):
        load_omniglot([SMALL1], data_dir=cache)
    assert not list(cache.glob("*.pt")) and not _leftovers(cache)


@needs_shared
def test_archive_changed_in_place_is_hashed_again(monkeypatch, tmp_path):
    monkeypatch.setattr(omniglot, "_RACY_S", 0.0)  # remember the hash of a file made just now
    cache = tmp_path / "cache"
    copy = tmp_path / SMALL1
    shutil.copyfile(SHARED / SMALL1, copy)
    assert verify_archive(copy, cache) == ARCHIVES[SMALL1]
    calls = []
    monkeypatch.setattr(omniglot, "_md5", lambda path, real=omniglot._md5: calls.append(path) or real(path))
    assert verify_archive(copy, cache) == ARCHIVES[SMALL1] and calls == []
    # Rewrite one byte, keeping the size and restoring the modification time: still caught.
    before = copy.stat()
    time.sleep(0.05)
    with open(copy, "r+b") as handle:
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ValueError, match="has MD5"):
        verify_archive(copy, cache)
    assert calls == [copy]


def test_hash_record_is_fresh_safe_damage_safe_and_written_atomically(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    archive = _archive(tmp_path / "mine.zip", characters=1)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    # A file written a moment ago could change again within the clock's granularity: not remembered.
    assert verify_archive(archive, cache) == md5 and not (cache / omniglot._HASH_RECORD).exists()
    monkeypatch.setattr(omniglot, "_RACY_S", 0.0)
    # A damaged record is ignored and replaced.
    cache.mkdir()
    (cache / omniglot._HASH_RECORD).write_text("{ not json")
    assert verify_archive(archive, cache) == md5
    assert md5 in (cache / omniglot._HASH_RECORD).read_text()
    # A failed write of the record keeps the answer and leaves no temporary file.
    (cache / omniglot._HASH_RECORD).unlink()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(omniglot.os, "replace", failing_replace)
    assert verify_archive(archive, cache) == md5
    assert not (cache / omniglot._HASH_RECORD).exists() and not _leftovers(cache)
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        verify_archive(tmp_path / "nope.zip", cache)


# -- 2. the decoded cache is checked on load, and rebuilt when it fails -----------------------
def _flip_pixels(stored):
    flat = stored["images"].view(-1)
    flat[torch.arange(100) * 37] ^= 0xFF


def _truncate_drawings(stored):
    stored["images"] = stored["images"][:, :10].clone()


def _truncate_and_resign(stored):
    """A consistent cache (shape and checksum rewritten) that still disagrees with the archives."""
    _truncate_drawings(stored)
    stored["header"]["shape"][1] = 10
    stored["sha256"] = omniglot._tensor_digest(stored["images"], stored["header"])


def _other_sources(stored):
    stored["header"]["sources"][0][1] = "0" * 32


def _other_dtype(stored):
    stored["images"] = stored["images"].to(torch.int16)


def _old_format(stored):
    images = stored["images"]
    stored.clear()
    stored.update(images=images, alphabets=["Latin"] * len(images), characters=["?"] * len(images))


TAMPERING = {
    "flipped pixels": (_flip_pixels, "does not match its checksum"),
    "10 drawings per character": (_truncate_drawings, r"tensor is \[3, 10, 14, 14\]"),
    "10 drawings, checksum rewritten": (_truncate_and_resign, "shape is"),
    "other source archives": (_other_sources, "sources is"),
    "another dtype": (_other_dtype, "torch.int16"),
    "the unchecked format": (_old_format, "not a checksummed cache"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_damaged_cache_is_rebuilt_with_a_warning(monkeypatch, tmp_path, case):
    tamper, reason = TAMPERING[case]
    cache = tmp_path / "cache"
    archive = _archive(tmp_path / "mine.zip")
    good = load_omniglot([archive], data_dir=cache, image_size=14)
    (cache_file,) = cache.glob("*.pt")
    stored = torch.load(cache_file, weights_only=True)
    tamper(stored)
    torch.save(stored, cache_file)
    with pytest.warns(RuntimeWarning, match=reason) as caught:
        rebuilt = load_omniglot([archive], data_dir=cache, image_size=14)
    assert cache_file.name in str(caught[0].message) and "rebuilding" in str(caught[0].message)
    assert torch.equal(rebuilt.images, good.images) and rebuilt.characters == good.characters
    # The rebuilt cache is whole again: the next load reads it, quietly, without decoding.
    monkeypatch.setattr(omniglot, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_omniglot([archive], data_dir=cache, image_size=14).images, good.images)
    assert not _leftovers(cache)


def test_unreadable_cache_is_rebuilt_with_a_warning(tmp_path):
    cache = tmp_path / "cache"
    archive = _archive(tmp_path / "mine.zip", characters=1)
    good = load_omniglot([archive], data_dir=cache)
    (cache_file,) = cache.glob("*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert torch.equal(load_omniglot([archive], data_dir=cache).images, good.images)


def test_intact_cache_is_used_without_decoding(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    archive = _archive(tmp_path / "mine.zip")
    decoded = []
    monkeypatch.setattr(omniglot, "decode_image",
                        lambda data, size, real=omniglot.decode_image: decoded.append(1) or real(data, size))
    first = load_omniglot([archive], data_dir=cache)
    assert len(decoded) == 3 * 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = load_omniglot([archive], data_dir=cache)
    assert len(decoded) == 3 * 20   # nothing decoded the second time
    assert torch.equal(second.images, first.images) and second.characters == first.characters
    assert second.alphabets == first.alphabets == ["Latin"] * 3


def test_failed_cache_write_leaves_no_temporary_file(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    archive = _archive(tmp_path / "mine.zip", characters=1)
    real_save = torch.save

    def half_then_fail(obj, file, exception):
        file.write(b"half a file")
        raise exception

    # A full disk: the data still arrive, uncached, and nothing is left behind.
    monkeypatch.setattr(omniglot.torch, "save", lambda obj, path: half_then_fail(obj, path, OSError("disk full")))
    assert load_omniglot([archive], data_dir=cache).images.shape == (1, 20, 28, 28)
    assert not list(cache.glob("*.pt")) and not _leftovers(cache)
    # Interrupted (Ctrl-C) mid-write: the interruption propagates, nothing is left behind.
    monkeypatch.setattr(omniglot.torch, "save", lambda obj, path: half_then_fail(obj, path, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        load_omniglot([archive], data_dir=cache)
    assert not list(cache.glob("*.pt")) and not _leftovers(cache)
    monkeypatch.setattr(omniglot.torch, "save", real_save)
    load_omniglot([archive], data_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1 and not _leftovers(cache)


# -- 3. headers that claim huge images --------------------------------------------------------
def test_crafted_png_is_what_it_claims():
    bomb = _png_header_only(30000, 30000)
    with pytest.raises(Image.DecompressionBombError):   # what Pillow alone would raise
        Image.open(io.BytesIO(bomb))


@pytest.mark.parametrize("size", [30000, 5000])
def test_decompression_bomb_member_names_archive_and_member(tmp_path, size):
    member = "x/Latin/character02/1002_07.png"
    archive = _archive(tmp_path / "bomb.zip", replace={member: _png_header_only(size, size)})
    with pytest.raises(ValueError, match=rf"bomb\.zip.*member '{member}'.*{size}x{size} pixels.*decompression bomb"):
        load_omniglot([archive], data_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.pt"))


def test_decompression_bomb_refused_with_pillow_limit_off(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ValueError, match="30000x30000 pixels"):
        decode_image(_png_header_only(30000, 30000))
    # Another format, whose header only Pillow reads: a BMP claiming 30000x30000.
    info = struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 8, 0, 0, 2835, 2835, 0, 0)
    bmp = b"BM" + struct.pack("<IHHI", 14 + 40 + 1024, 0, 0, 14 + 40 + 1024) + info + bytes(1024)
    with pytest.raises(ValueError, match="30000x30000 pixels"):
        decode_image(bmp)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89478485)
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_image(bmp)


def test_decode_image_errors_are_value_errors():
    with pytest.raises(ValueError, match="corrupt or truncated"):
        decode_image(b"not an image at all")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        decode_image(_drawing(0)[:60])
    with pytest.raises(ValueError, match="image_size"):
        decode_image(_drawing(0), image_size=0)
    assert decode_image(_drawing(0)).shape == (28, 28)


def test_lake_runs_name_a_bomb_member(tmp_path):
    run = tmp_path / "runs" / "run01"
    (run / "training").mkdir(parents=True)
    (run / "test").mkdir()
    (run / "training" / "class01.png").write_bytes(_png_header_only(30000, 30000))
    (run / "test" / "item01.png").write_bytes(_drawing(1))
    (run / "class_labels.txt").write_text("run01/test/item01.png run01/training/class01.png\n")
    with pytest.raises(ValueError, match=r"member 'run01/training/class01.png'.*30000x30000"):
        read_lake_runs(tmp_path / "runs")


# -- the procedural glyphs' cache is checked the same way ---------------------------------------
def test_glyph_cache_is_checked_and_reused(monkeypatch, tmp_path):
    import mlbook.data as data_module
    from mlbook.data import load_image_classes

    def load():
        return load_image_classes("glyphs", data_dir=tmp_path, glyph_classes=4, image_size=14, verbose=False)

    good = load().images
    (cache_file,) = tmp_path.glob("glyphs-*.pt")
    stored = torch.load(cache_file, weights_only=True)
    _flip_pixels(stored)
    torch.save(stored, cache_file)
    with pytest.warns(RuntimeWarning, match="glyph cache .* does not match its checksum"):
        assert torch.equal(load().images, good)
    monkeypatch.setattr(data_module, "make_glyphs", lambda *a, **k: pytest.fail("drawn again"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load().images, good)
    assert not _leftovers(tmp_path)
    with pytest.raises(ValueError, match="glyph_classes must be a positive integer"):
        load_image_classes("glyphs", data_dir=tmp_path, glyph_classes=0, verbose=False)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        load_image_classes("glyphs", data_dir=tmp_path, glyph_classes=4, seed=-1, verbose=False)


# -- framed images are cached under the checksum of what they frame -----------------------------
def test_framed_image_cache_is_checked_reused_and_keyed_by_its_source(monkeypatch, tmp_path):
    import mlbook.data as data_module
    from mlbook.data import frame_characters, load_image_classes

    def load(**changes):
        settings = {"glyph_classes": 4, "image_size": 14, "frame": "fitted", **changes}
        return load_image_classes("glyphs", data_dir=tmp_path, verbose=False, **settings).images

    framed = load()
    canvas = load_image_classes("glyphs", data_dir=tmp_path, glyph_classes=4, image_size=14, verbose=False).images
    assert torch.equal(framed, frame_characters(canvas, 14, "fitted"))
    (cache_file,) = tmp_path.glob("framed-fitted-14px-*.pt")
    stored = torch.load(cache_file, weights_only=True)
    _flip_pixels(stored)
    torch.save(stored, cache_file)
    with pytest.warns(RuntimeWarning, match="framed-image cache .* does not match its checksum"):
        assert torch.equal(load(), framed)
    monkeypatch.setattr(data_module, "frame_characters", lambda *a, **k: pytest.fail("framed again"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load(), framed)
    monkeypatch.undo()
    # Other drawings (another seed) are framed afresh and cached beside the first.
    other = load(seed=1)
    assert not torch.equal(other, framed) and len(list(tmp_path.glob("framed-fitted-14px-*.pt"))) == 2
    assert not _leftovers(tmp_path)
