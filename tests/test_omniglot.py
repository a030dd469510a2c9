"""The Omniglot reader: real minimal archives, fake archives, downloads, Lake's runs (Chapter 2)."""
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlbook.data import load_image_classes
from mlbook.data import omniglot
from mlbook.data.omniglot import (extract_archive, find_archive, load_omniglot, read_lake_runs)

from omniglot_support import SHARED, SMALL, isolated, needs_shared  # noqa: F401 (isolated: autouse)


def _png(pattern: np.ndarray) -> bytes:
    """A 105x105 black-on-white PNG (the release's format) with ``pattern`` as its strokes."""
    pixels = np.where(pattern, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert("1")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _pattern(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pattern = np.zeros((105, 105), dtype=bool)
    for _ in range(3):
        r, c = rng.integers(10, 80, size=2)
        pattern[r:r + 20, c:c + 4] = True
    return pattern


def _fake_archive(path: Path, root: str, alphabets: dict, drawers=20, extra=()):
    """A zip in the release's layout: root/<Alphabet>/characterNN/<id>_<drawer>.png."""
    with zipfile.ZipFile(path, "w") as archive:
        for alphabet, count in alphabets.items():
            for c in range(1, count + 1):
                for d in range(1, drawers + 1):
                    seed = hash((alphabet, c)) % 10_000
                    archive.writestr(f"{root}/{alphabet}/character{c:02d}/{1000 + c:04d}_{d:02d}.png",
                                     _png(_pattern(seed)))
        for name in extra:
            archive.writestr(name, b"x")
    return path


# -- the real minimal archives ------------------------------------------------------------
@needs_shared
def test_real_minimal_archives(monkeypatch, tmp_path):
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(SHARED))
    one = load_omniglot([SMALL[0]], data_dir=tmp_path)
    two = load_omniglot([SMALL[1]], data_dir=tmp_path)
    both = load_omniglot(SMALL, data_dir=tmp_path)
    assert one.images.shape == (136, 20, 28, 28)
    assert two.images.shape == (156, 20, 28, 28)
    assert both.images.shape == (242, 20, 28, 28) and both.images.dtype == torch.uint8
    assert len(both.alphabet_names) == 8
    assert set(one.alphabet_names) == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert set(two.alphabet_names) == {"Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"}
    assert len(set(both.characters)) == 242 and "Greek/character01" in both.characters
    assert len(both.alphabets) == 242
    # Bright strokes on a dark background: most pixels are dark, some are bright.
    assert (both.images == 0).float().mean() > 0.7 and both.images.max() == 255
    # The shared Greek characters are the same images in both archives.
    g1 = one.images[one.characters.index("Greek/character05")]
    g2 = two.images[two.characters.index("Greek/character05")]
    assert torch.equal(g1, g2)
    # The second load reads the cache and gives identical data.
    assert any(p.suffix == ".pt" for p in tmp_path.iterdir())
    again = load_omniglot(SMALL, data_dir=tmp_path)
    assert torch.equal(again.images, both.images) and again.characters == both.characters
    # Paths work as well as names.
    by_path = load_omniglot([SHARED / SMALL[0]], data_dir=tmp_path / "other", image_size=20)
    assert by_path.images.shape == (136, 20, 20, 20)


@needs_shared
def test_load_image_classes_uses_omniglot_when_present(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(SHARED))
    data = load_image_classes("auto", data_dir=tmp_path)
    assert data.source == "omniglot" and data.images.shape[0] == 242
    assert "real Omniglot" in capsys.readouterr().out
    splits = data.split((0.5, 0.25, 0.25), seed=0)
    alphabets = {k: {data.alphabets[i] for i in v.tolist()} for k, v in splits.items()}
    assert len(alphabets["train"]) == 4 and len(alphabets["val"]) == 2 and len(alphabets["test"]) == 2


# -- fake archives --------------------------------------------------------------------------
def test_fake_archives_overlap_counted_once(tmp_path):
    a = _fake_archive(tmp_path / "a.zip", "images_a", {"Greek": 3, "Balinese": 2})
    b = _fake_archive(tmp_path / "b.zip", "images_b", {"Greek": 3, "Tagalog": 4})
    data = load_omniglot([a, b], data_dir=tmp_path / "cache", image_size=14)
    assert data.images.shape == (9, 20, 14, 14)
    assert data.alphabet_names == ["Balinese", "Greek", "Tagalog"]
    assert data.characters.count("Greek/character01") == 1
    # Drawers are in drawer order; all drawings of a fake character are the same pattern.
    assert torch.equal(data.images[0, 0], data.images[0, 19])
    assert data.images[0, 0].sum() > 0


def test_archives_found_through_environment(monkeypatch, tmp_path):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    _fake_archive(folder / "mine.zip", "mine", {"Latin": 2})
    with pytest.raises(FileNotFoundError, match="mine.zip"):
        load_omniglot(["mine.zip"], data_dir=tmp_path / "cache")
    monkeypatch.setenv("MLBOOK_OMNIGLOT", str(folder))
    assert load_omniglot(["mine"], data_dir=tmp_path / "cache").images.shape == (2, 20, 28, 28)


def test_a_folder_that_is_not_there_is_named_in_a_warning(monkeypatch, tmp_path):
    # Relative to the repository it is the data; relative to book/, where chapters run, nothing.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLBOOK_OMNIGLOT", "../shared/data/omniglot")
    with pytest.warns(RuntimeWarning, match=r"MLBOOK_OMNIGLOT is '\.\./shared/data/omniglot'.*absolute"):
        with pytest.raises(FileNotFoundError, match="download=False"):
            find_archive("images_background_small1.zip", tmp_path / "cache", download=False)


def test_missing_archive_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False"):
        find_archive("images_background.zip", tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="download .* failed"):
        find_archive("images_background.zip", tmp_path, download=True)
    assert not list(tmp_path.iterdir())   # a failed download leaves nothing behind


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        load_omniglot(image_size=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="archives must name"):
        load_omniglot([], data_dir=tmp_path)
    with pytest.raises(ValueError, match="source must be one of 'auto', 'omniglot', 'glyphs'"):
        load_image_classes("mnist")


def test_corrupt_and_truncated_archives(tmp_path):
    good = _fake_archive(tmp_path / "good.zip", "x", {"Latin": 2})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_omniglot([truncated], data_dir=cache)
    # Flip bytes inside a member: the directory is fine but the data are not.
    flipped = bytearray(data)
    start = data.index(b"IHDR")
    flipped[start:start + 200] = bytes(200)
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_omniglot([corrupt], data_dir=cache)
    # No cache and no temporary files (only, perhaps, the record of the archives' hashes).
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name != omniglot._HASH_RECORD]
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "nothing here")
    with pytest.raises(ValueError, match="no Omniglot images"):
        load_omniglot([empty], data_dir=cache)


def test_uneven_drawer_counts_are_refused(tmp_path):
    a = _fake_archive(tmp_path / "a.zip", "a", {"Latin": 1}, drawers=20)
    b = _fake_archive(tmp_path / "b.zip", "b", {"Greek": 1}, drawers=19)
    with pytest.raises(ValueError, match="different numbers of drawings"):
        load_omniglot([a, b], data_dir=tmp_path / "cache")


def test_members_escaping_the_target_are_refused(tmp_path):
    evil = _fake_archive(tmp_path / "evil.zip", "x", {"Latin": 1}, extra=["../../escaped.png"])
    with pytest.raises(ValueError, match="escape"):
        load_omniglot([evil], data_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="escape"):
        extract_archive(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path.parent / "escaped.png").exists()
    absolute = tmp_path / "absolute.zip"
    with zipfile.ZipFile(absolute, "w") as archive:
        archive.writestr("/etc/evil.png", b"x")
    with pytest.raises(ValueError, match="escape"):
        extract_archive(absolute, tmp_path / "out")
    fine = extract_archive(_fake_archive(tmp_path / "fine.zip", "x", {"Latin": 1}), tmp_path / "out")
    assert (fine / "x" / "Latin" / "character01").is_dir()


def test_download_verifies_and_writes_atomically(monkeypatch, tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    archive = _fake_archive(server / "images_background_small1.zip", "images_background_small1", {"Latin": 2})
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(omniglot, "BASE_URL", server.as_uri() + "/")
    cache = tmp_path / "cache"
    # A wrong checksum: error, and neither the archive nor a temporary file is left.
    monkeypatch.setitem(omniglot.ARCHIVES, "images_background_small1.zip", "0" * 32)
    with pytest.raises(ValueError, match="MD5"):
        load_omniglot(["images_background_small1.zip"], data_dir=cache)
    assert not list(cache.iterdir())
    # The right checksum: downloaded under its name, then decoded.
    monkeypatch.setitem(omniglot.ARCHIVES, "images_background_small1.zip", md5)
    data = load_omniglot(["images_background_small1.zip"], data_dir=cache)
    assert data.images.shape == (2, 20, 28, 28)
    assert (cache / "images_background_small1.zip").read_bytes() == archive.read_bytes()
    assert not [p for p in cache.iterdir() if p.name.endswith((".part", ".tmp"))]
    with pytest.raises(ValueError, match="name must be one of"):
        omniglot.download_archive("all_runs.zip", cache)


def test_auto_falls_back_to_glyphs_visibly(tmp_path, capsys):
    data = load_image_classes("auto", data_dir=tmp_path, download=False, glyph_classes=30)
    assert data.source == "glyphs" and data.images.shape == (30, 20, 28, 28)
    out = capsys.readouterr().out
    assert "PROCEDURAL GLYPHS" in out and "not available" in out
    with pytest.raises(FileNotFoundError):
        load_image_classes("omniglot", data_dir=tmp_path, download=False)


# -- Lake's one-shot runs -----------------------------------------------------------------
def _write_runs(write, runs, ways, images_for):
    """Lake's layout: runNN/training/classNN.png, runNN/test/itemNN.png, runNN/class_labels.txt."""
    truth = []
    for r in range(1, runs + 1):
        rng = np.random.default_rng(r)
        order = rng.permutation(ways)            # item i shows class order[i]
        lines = []
        for c in range(ways):
            train, test = images_for(r, c)
            write(f"run{r:02d}/training/class{c + 1:02d}.png", train)
        for i, c in enumerate(order):
            write(f"run{r:02d}/test/item{i + 1:02d}.png", images_for(r, c)[1])
            lines.append(f"run{r:02d}/test/item{i + 1:02d}.png run{r:02d}/training/class{c + 1:02d}.png")
        write(f"run{r:02d}/class_labels.txt", ("\n".join(lines) + "\n").encode())
        truth.append(order)
    return np.stack(truth)


def _synthetic(r, c):
    png = _png(_pattern(100 * r + c))
    return png, png


def _check_runs(episode, names, truth, runs, ways):
    assert names == [f"run{r:02d}" for r in range(1, runs + 1)]
    assert episode.support_x.shape == (runs, ways, 1, 28, 28)
    assert episode.query_x.shape == (runs, ways, 1, 28, 28)
    assert episode.support_y.tolist() == [list(range(ways))] * runs
    assert torch.equal(episode.query_y, torch.as_tensor(truth))
    # Each query shows the same picture as the support image of its label.
    for r in range(runs):
        assert torch.equal(episode.query_x[r], episode.support_x[r][episode.query_y[r]])


def test_lake_runs_folder_and_zip(tmp_path):
    folder = tmp_path / "all_runs"

    def write_file(name, data):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    truth = _write_runs(write_file, 3, 5, _synthetic)
    _check_runs(*read_lake_runs(folder), truth, 3, 5)
    with zipfile.ZipFile(tmp_path / "all_runs.zip", "w") as archive:
        truth = _write_runs(archive.writestr, 3, 5, _synthetic)
    _check_runs(*read_lake_runs(tmp_path / "all_runs.zip"), truth, 3, 5)
    # The same runs under a top folder inside the zip.
    with zipfile.ZipFile(tmp_path / "nested.zip", "w") as archive:
        truth = _write_runs(lambda n, d: archive.writestr("all_runs/" + n, d), 2, 5, _synthetic)
    _check_runs(*read_lake_runs(tmp_path / "nested.zip"), truth, 2, 5)


@needs_shared
def test_lake_runs_twenty_way_from_real_drawings(tmp_path):
    """Twenty runs of 20-way 1-shot, built from real drawings: two drawers of each character."""
    with zipfile.ZipFile(SHARED / SMALL[1]) as source:
        pngs = sorted(n for n in source.namelist() if n.endswith(".png"))
        by_char = {}
        for n in pngs:
            by_char.setdefault(n.rsplit("/", 1)[0], []).append(n)
        chars = sorted(by_char)
        drawings = {key: (source.read(by_char[key][0]), source.read(by_char[key][1])) for key in chars[:40]}

    def images_for(r, c):
        return drawings[chars[(r + c) % 40]]

    with zipfile.ZipFile(tmp_path / "all_runs.zip", "w") as archive:
        truth = _write_runs(archive.writestr, 20, 20, images_for)
    episode, names = read_lake_runs(tmp_path / "all_runs.zip")
    assert episode.batch_size == 20 and len(names) == 20
    assert episode.support_x.shape == (20, 20, 1, 28, 28) and episode.query_x.shape == (20, 20, 1, 28, 28)
    assert torch.equal(episode.query_y, torch.as_tensor(truth))
    # A query drawn by another hand is nearer (in pixels) its own class's support image than
    # chance would have it: raw pixels are a weak metric (about 15% here) but chance is 5%,
    # so a reader that mixed up labels would score about 0.05 on these 400 queries.
    s = episode.support_x.flatten(2)
    q = episode.query_x.flatten(2)
    nearest = torch.cdist(q, s).argmin(-1)
    assert (nearest == episode.query_y).float().mean() > 0.1


def test_lake_runs_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_lake_runs(tmp_path / "nope.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runNN/class_labels.txt"):
        read_lake_runs(tmp_path / "empty")
    broken = tmp_path / "broken"
    (broken / "run01").mkdir(parents=True)
    (broken / "run01" / "class_labels.txt").write_text("run01/test/item01.png run01/training/class01.png\n")
    with pytest.raises(FileNotFoundError, match="missing image"):
        read_lake_runs(broken)
    with pytest.raises(ValueError, match="image_size"):
        read_lake_runs(broken, image_size=-3)
