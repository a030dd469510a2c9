"""Omniglot: the release's zip archives as one uint8 class tensor (Chapter 2, "Task distributions").

Omniglot (Lake, Salakhutdinov and Tenenbaum, 2015) has 1,623 handwritten characters from 50
alphabets, each drawn once by 20 people. The release ships them as zip archives of 105x105
black-on-white PNGs laid out ``<archive>/<Alphabet>/characterNN/<id>_<drawer>.png``. This
module reads those archives directly (nothing is unpacked), inverts them so that strokes are
bright on a dark background, resizes them, and caches the decoded tensor in a data folder.

Where archives are looked for, in order: the data folder (:func:`default_data_dir`), the
folder named by the environment variable ``MLBOOK_OMNIGLOT``, then a download from the
authors' GitHub release. Downloads and archives already on disk under a release name are
verified against the published MD5 checksums; the decoded cache carries its own checksum and
is rebuilt when it does not match.

It also reads Lake's twenty one-shot classification runs (``all_runs.zip``) as an episode.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import struct
import time
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..storage import atomic_torch_save, atomic_write
from ..tasks import Episode, alphabet_split
from ..utils import check_choice, check_positive_int

__all__ = [
    "OmniglotData", "load_omniglot", "read_lake_runs", "alphabet_split", "default_data_dir",
    "find_archive", "download_archive", "verify_archive", "extract_archive", "decode_image",
    "ARCHIVES", "BASE_URL", "OMNIGLOT_SIZE",
]

#: The release's archives and their MD5 checksums (as the release's users verify them).
ARCHIVES = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
}

#: Where the release's archives are downloaded from: ``BASE_URL + name``.
BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"

#: The side, in pixels, of the release's drawings.
OMNIGLOT_SIZE = 105

# Bump when the decoded layout changes, so stale caches are never read.
_CACHE_VERSION = 2
_DOWNLOAD_TIMEOUT_S = 30
# Where verified archive checksums are remembered, in the data folder: hashing the full
# archives on every load would cost more than reading the decoded cache.
_HASH_RECORD = "archive-md5.json"
# A file changed again within the file system's timestamp granularity would keep its size and
# times, so a hash is remembered only once the file has been still for this long (as git does).
_RACY_S = 2.0
# Omniglot drawings are 105x105. A PNG header may claim any size and the decoder would
# allocate it; this bound also holds when a user has switched off Pillow's own limit.
_MAX_PIXELS = 4096 * 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class OmniglotData:
    """Decoded Omniglot characters (Chapter 2).

    ``images`` is uint8 ``[classes, 20, S, S]`` with bright strokes on a dark background;
    ``alphabets[c]`` and ``characters[c]`` (e.g. ``"Greek/character01"``) name class ``c``.
    """

    images: torch.Tensor
    alphabets: list[str]
    characters: list[str]

    @property
    def alphabet_names(self) -> list[str]:
        """The distinct alphabets, in the order they first appear."""
        return list(dict.fromkeys(self.alphabets))

    def __repr__(self) -> str:
        return (f"OmniglotData({self.images.shape[0]} characters x {self.images.shape[1]} drawers, "
                f"{self.images.shape[-1]}x{self.images.shape[-1]} px, {len(self.alphabet_names)} alphabets)")


def default_data_dir() -> Path:
    """The data folder: ``$MLBOOK_DATA`` if set, else ``~/.cache/mlbook`` (Chapter 2)."""
    env = os.environ.get("MLBOOK_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlbook"


# -- finding, downloading and checking archives ---------------------------------------------
def _search_dirs(data_dir: Path) -> list[Path]:
    dirs = [data_dir]
    env = os.environ.get("MLBOOK_OMNIGLOT")
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            # A relative path names a different folder from a notebook's own folder (book/),
            # where chapters run: say so, or the chapters quietly use the glyphs instead.
            warnings.warn(f"MLBOOK_OMNIGLOT is {env!r}, which is not a folder seen from "
                          f"{os.getcwd()}; give the archives' folder as an absolute path",
                          RuntimeWarning, stacklevel=3)
        dirs.append(folder)
    return dirs


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> dict:
    info = path.stat()
    # ctime is in the stamp because a rewrite that restores mtime (touch -r, cp -p) moves it.
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns,
            "inode": info.st_ino}


def _read_hash_record(data_dir: Path) -> dict:
    try:
        record = json.loads((data_dir / _HASH_RECORD).read_text())
    except (OSError, ValueError):  # absent or damaged: the hashes are only recomputed
        return {}
    archives = record.get("archives") if isinstance(record, dict) else None
    return archives if isinstance(archives, dict) else {}


def _archive_md5(path: Path, data_dir: Path) -> str:
    """The archive's MD5, from the data folder's record while the file is unchanged."""
    key = os.path.realpath(path)
    stamp = _stamp(path)
    record = _read_hash_record(data_dir)
    entry = record.get(key)
    if (isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items())
            and isinstance(entry.get("md5"), str) and re.fullmatch(r"[0-9a-f]{32}", entry["md5"])):
        return entry["md5"]
    digest = _md5(path)
    settled = time.time() - max(stamp["mtime_ns"], stamp["ctime_ns"]) / 1e9 > _RACY_S
    if settled and _stamp(path) == stamp:  # a file that changed while it was read is not remembered
        record = {k: v for k, v in record.items() if os.path.exists(k)}  # forget archives that are gone
        record[key] = {**stamp, "md5": digest}
        text = json.dumps({"format": 1, "archives": record}, indent=1, sort_keys=True)
        try:
            with atomic_write(data_dir / _HASH_RECORD) as file:
                file.write(text.encode())
        except OSError:  # a read-only data folder: the archive is hashed again next time
            pass
    return digest


def verify_archive(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> str:
    """Check a local archive against the release's MD5 when it has a release name; return its MD5 (Chapter 2).

    Downloads are verified as they arrive; this checks archives that were already on disk.
    The hash is remembered in ``data_dir`` (keyed by the file's path, size and times), so an
    unchanged archive is hashed once, not on every load. Archives with other names are only
    hashed (the hash keys the decoded cache).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file: give an archive such as "
                                f"{', '.join(ARCHIVES)}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    actual = _archive_md5(path, data_dir)
    expected = ARCHIVES.get(path.name)
    if expected is not None and actual != expected:
        raise ValueError(f"archive {str(path)!r} has MD5 {actual}, but the release's {path.name} has MD5 "
                         f"{expected}: the file is corrupt or truncated (delete it and fetch it again), "
                         f"or it is another archive under a release name (rename it)")
    return actual


def download_archive(name: str, data_dir: str | os.PathLike | None = None,
                     base_url: str | None = None) -> Path:
    """Download one of the release's archives into ``data_dir``, verified by MD5 (Chapter 2).

    The bytes go to a temporary file in the same folder, which is renamed only once the
    checksum matches, so an interrupted or corrupted download leaves nothing behind.
    """
    if name not in ARCHIVES:
        raise ValueError(f"name must be one of {', '.join(map(repr, ARCHIVES))} to download; got {name!r}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = (base_url if base_url is not None else BASE_URL) + name
    target = data_dir / name
    with atomic_write(target) as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        digest = hashlib.md5()
        for block in iter(lambda: response.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != ARCHIVES[name]:
            # Raised before the rename, so a bad download never takes the archive's name.
            raise ValueError(f"downloaded {name} from {url} has MD5 {digest.hexdigest()}, expected "
                             f"{ARCHIVES[name]}: the download is corrupt or truncated (nothing was kept)")
    return target


def find_archive(name: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> Path:
    """Locate an archive given as a path or a name: data folder, ``$MLBOOK_OMNIGLOT``, download (Chapter 2).

    An archive found on disk under one of the release's names is checked against its MD5
    (see :func:`verify_archive`), as a download is.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = Path(name).expanduser()
    if path.is_file():
        verify_archive(path, data_dir)
        return path
    base = path.name
    if not base.endswith(".zip"):
        base += ".zip"
    searched = _search_dirs(data_dir)
    for folder in searched:
        if (folder / base).is_file():
            verify_archive(folder / base, data_dir)
            return folder / base
    if download and base in ARCHIVES:
        try:
            return download_archive(base, data_dir)
        except OSError as error:  # offline, refused, DNS: say where we looked
            raise FileNotFoundError(
                f"archive {str(name)!r} not found in {', '.join(map(str, searched))} and the download "
                f"from {BASE_URL + base} failed ({error}); set MLBOOK_OMNIGLOT to a folder holding it") from None
    hint = "" if base in ARCHIVES else f" (the release's archives are {', '.join(ARCHIVES)})"
    raise FileNotFoundError(f"archive {str(name)!r} not found in {', '.join(map(str, searched))}"
                            f"{'' if download else ' and download=False'}{hint}")


def _safe_member(name: str) -> bool:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return False
    norm = posixpath.normpath(name.replace("\\", "/"))
    return norm != ".." and not norm.startswith("../")


def _open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive, refusing corrupt files and members that would escape a target folder."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"archive {str(path)!r} is corrupt or truncated ({error}); delete it and "
                         f"fetch it again") from None
    bad = [info.filename for info in archive.infolist() if not _safe_member(info.filename)]
    if bad:
        archive.close()
        raise ValueError(f"archive {str(path)!r} has members that would escape the target folder: {bad[:3]}")
    return archive


def extract_archive(path: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Unpack a zip into ``target``, refusing members that would land outside it (Chapter 2)."""
    target = Path(target)
    with _open_zip(Path(path)) as archive:
        root = target.resolve()
        for info in archive.infolist():
            destination = (root / info.filename).resolve()
            if root != destination and root not in destination.parents:
                raise ValueError(f"member {info.filename!r} of {str(path)!r} would escape {str(target)!r}")
        archive.extractall(target)
    return target


# -- decoding ---------------------------------------------------------------------------------
def _check_pixels(width: int, height: int) -> None:
    if width * height > _MAX_PIXELS:
        raise ValueError(f"the image header claims {width}x{height} pixels, more than the {_MAX_PIXELS:,} "
                         f"allowed: refused as a possible decompression bomb (Omniglot drawings are 105x105)")


def decode_image(data: bytes, image_size: int = 28) -> np.ndarray:
    """One release PNG -> uint8 ``[S, S]`` with bright strokes on a dark background (Chapter 2).

    Resizing uses a box filter (an area average), so thin strokes stay visible at 28x28.
    Bytes that are not a readable image, or whose header claims more than 4096x4096 pixels
    (a decompression bomb), raise ``ValueError``.
    """
    from PIL import Image

    image_size = check_positive_int("image_size", image_size)
    # Read the PNG header's size before Pillow does: Pillow only warns up to twice its own
    # limit, and a user may have switched that limit off.
    if len(data) >= 24 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        _check_pixels(*struct.unpack(">II", data[16:24]))
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(*image.size)  # other formats, whose headers are not read above
            grey = image.convert("L")
            if grey.size != (image_size, image_size):
                grey = grey.resize((image_size, image_size), Image.BOX)
            return 255 - np.asarray(grey, dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise ValueError(f"the image was refused as a possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, EOFError, struct.error, zlib.error) as error:
        raise ValueError(f"the image is corrupt or truncated ({type(error).__name__}: {error})") from None


def _decode_member(read, source: Path, name: str, image_size: int) -> np.ndarray:
    """Decode one member, naming the archive and the member in any error (KeyError passes: missing)."""
    try:
        data = read(name)
    except KeyError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, zlib.error) as error:
        raise ValueError(f"archive {str(source)!r} is corrupt or truncated: reading member {name!r} failed "
                         f"({error}); delete it and fetch it again") from None
    try:
        return decode_image(data, image_size)
    except ValueError as error:
        raise ValueError(f"archive {str(source)!r}, member {name!r}: {error}") from None


_PNG = re.compile(r"(?:^|/)([^/]+)/(character\d+)/([^/]+_(\d+))\.png$")


def _layout(paths: list[Path]) -> tuple[list, list[str], int]:
    """Which members make which character, from the archives' directories alone (nothing decoded).

    Returns ``[(path, [(character, members in drawer order), ...]), ...]``, the characters in
    tensor order and the number of drawings per character.
    """
    seen: set[str] = set()
    plan, counts = [], {}
    for path in paths:
        with _open_zip(path) as archive:
            names = archive.namelist()
        groups: dict[str, list[tuple[int, str]]] = {}
        for name in names:
            match = _PNG.search(name)
            if match:
                alphabet, character, _, drawer = match.groups()
                groups.setdefault(f"{alphabet}/{character}", []).append((int(drawer), name))
        if not groups:
            raise ValueError(f"archive {str(path)!r} holds no Omniglot images "
                             f"(<Alphabet>/characterNN/<id>_<drawer>.png)")
        chosen = []
        for key in sorted(groups):
            if key in seen:  # small1 and small2 share Greek and Latin: count them once
                continue
            seen.add(key)
            members = [name for _, name in sorted(groups[key])]
            counts[len(members)] = counts.get(len(members), 0) + 1
            chosen.append((key, members))
        plan.append((path, chosen))
    if len(counts) != 1:
        raise ValueError(f"characters have different numbers of drawings ({counts} characters per count); "
                         f"the archives are not Omniglot's release")
    characters = [key for _, chosen in plan for key, _ in chosen]
    return plan, characters, next(iter(counts))


def _decode_archives(plan: list, image_size: int) -> torch.Tensor:
    arrays = []
    for path, chosen in plan:
        if not chosen:
            continue
        with _open_zip(path) as archive:
            for _, members in chosen:
                arrays.append(np.stack([_decode_member(archive.read, path, name, image_size)
                                        for name in members]))
    return torch.from_numpy(np.stack(arrays))


# -- the decoded cache ----------------------------------------------------------------------
def _tensor_digest(images: torch.Tensor, header: dict) -> str:
    """SHA-256 of the header (shape, dtype, sources, names) and the tensor's bytes."""
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(b"\0")
    # A flat byte view, not a copy: a 105-pixel cache of the full release is 360 MB.
    digest.update(images.detach().cpu().contiguous().numpy().reshape(-1).view(np.uint8))
    return digest.hexdigest()


def tensor_sha256(images: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes: what a cache derived from it is keyed by (Chapter 5)."""
    return _tensor_digest(images, {"shape": list(images.shape), "dtype": str(images.dtype)})


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_checked_cache(path: Path, expected: dict) -> tuple[torch.Tensor | None, str]:
    """The cached tensor if the file is intact and matches ``expected``; else ``None`` and why."""
    try:
        stored = torch.load(path, weights_only=True)
    except Exception as error:  # any unreadable file is rebuilt, never trusted
        return None, f"it cannot be read ({type(error).__name__}: {error})"
    if not (isinstance(stored, dict) and isinstance(stored.get("header"), dict)
            and isinstance(stored.get("images"), torch.Tensor) and isinstance(stored.get("sha256"), str)):
        return None, "it is not a checksummed cache of this version"
    header, images = stored["header"], stored["images"]
    for field, value in expected.items():
        if header.get(field) != value:
            return None, f"its {field} is {_short(header.get(field))}, not the expected {_short(value)}"
    if list(images.shape) != expected["shape"] or str(images.dtype) != expected["dtype"]:
        return None, (f"its tensor is {list(images.shape)} {images.dtype}, its header says "
                      f"{expected['shape']} {expected['dtype']}")
    if _tensor_digest(images, header) != stored["sha256"]:
        return None, "its tensor does not match its checksum (the file was altered or damaged)"
    return images, ""


def save_checked_cache(images: torch.Tensor, header: dict, path: Path) -> None:
    """Save a tensor with its header and checksum, atomically, for :func:`read_checked_cache`."""
    atomic_torch_save({"header": header, "images": images, "sha256": _tensor_digest(images, header)}, path)


def load_omniglot(archives: Sequence[str | os.PathLike] | str = ("images_background_small1.zip",
                                                                   "images_background_small2.zip"),
                  image_size: int = 28, data_dir: str | os.PathLike | None = None,
                  download: bool = True, cache: bool = True) -> OmniglotData:
    """Load Omniglot characters from the release's archives as one class tensor (Chapter 2).

    ``archives`` are names (looked for in ``data_dir``, then ``$MLBOOK_OMNIGLOT``, then
    downloaded when ``download``) or paths; those with a release name are checked against
    its MD5. A character in several archives is counted once: the two minimal splits give
    136 + 156 characters but 242 distinct ones (8 alphabets). The decoded tensor is cached
    in ``data_dir`` (written atomically) with a checksum of its contents, shape, dtype and
    source archives; a cache that fails the check is rebuilt, with a warning.
    """
    image_size = check_positive_int("image_size", image_size)
    if isinstance(archives, (str, os.PathLike)):
        archives = (archives,)
    archives = list(archives)
    if not archives:
        raise ValueError(f"archives must name at least one archive, e.g. {', '.join(ARCHIVES)}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    paths = [find_archive(name, data_dir, download) for name in archives]
    sources = [[path.name, verify_archive(path, data_dir)] for path in paths]  # remembered: no rehash

    plan, characters, drawings = _layout(paths)
    alphabets = [c.split("/")[0] for c in characters]
    header = {"format": _CACHE_VERSION, "shape": [len(characters), drawings, image_size, image_size],
              "dtype": str(torch.uint8), "image_size": image_size, "sources": sources,
              "characters": characters, "alphabets": alphabets}
    key = hashlib.sha256(f"v{_CACHE_VERSION}:{image_size}".encode())
    for path, (_, md5) in zip(paths, sources):
        key.update(f"|{path.name}:{path.stat().st_size}:{md5}".encode())
    cache_path = data_dir / f"omniglot-{image_size}px-{key.hexdigest()[:16]}.pt"
    if cache and cache_path.is_file():
        images, reason = read_checked_cache(cache_path, header)
        if images is not None:
            return OmniglotData(images, alphabets, characters)
        warnings.warn(f"the decoded Omniglot cache {str(cache_path)!r} is not used: {reason}; "
                      f"rebuilding it from the archives", RuntimeWarning, stacklevel=2)

    images = _decode_archives(plan, image_size)
    data = OmniglotData(images, alphabets, characters)
    if cache:
        try:
            save_checked_cache(images, header, cache_path)
        except OSError:  # a read-only data folder still gives the data, just uncached
            pass
    return data


# -- Lake's one-shot classification runs ------------------------------------------------------
_RUN = re.compile(r"(?:^|/)run(\d+)/class_labels\.txt$")


def read_lake_runs(path: str | os.PathLike, image_size: int = 28,
                   frame: str = "canvas") -> tuple[Episode, list[str]]:
    """Lake et al.'s one-shot runs as one episode batch: 20 runs of 20-way 1-shot (Chapter 2).

    ``path`` is ``all_runs.zip`` or its unpacked folder, holding ``runNN/training/classNN.png``
    (one drawing per class: the support set), ``runNN/test/itemNN.png`` (the queries) and
    ``runNN/class_labels.txt`` (lines ``runNN/test/itemNN.png runNN/training/classNN.png``).
    Support labels are the class numbers minus one; query labels follow class_labels.txt.
    Images are float in [0, 1], bright strokes on dark, ``[runs, 20, 1, S, S]``, framed as
    ``frame`` says (:func:`~mlbook.data.framing.frame_characters`).
    """
    from .framing import FRAMES, frame_characters

    image_size = check_positive_int("image_size", image_size)
    frame = check_choice("frame", frame, FRAMES)
    decoded_size = image_size if frame == "canvas" else OMNIGLOT_SIZE
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist: give all_runs.zip or its folder")
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
        read = lambda name: files[name].read_bytes()  # noqa: E731
        names = list(files)
        archive = None
    else:
        archive = _open_zip(path)
        names = archive.namelist()
        read = archive.read
    try:
        runs = sorted(((int(m.group(1)), name) for name in names if (m := _RUN.search(name))))
        if not runs:
            raise ValueError(f"path {str(path)!r} holds no runNN/class_labels.txt")
        support, support_y, query, query_y, run_names = [], [], [], [], []
        for number, labels_name in runs:
            prefix = labels_name[: -len("class_labels.txt")]             # ".../runNN/"
            run_dir = prefix.rstrip("/").split("/")[-1]
            root = prefix[: -len(run_dir) - 1]                         # what precedes runNN/
            lines = [line.split() for line in read(labels_name).decode().splitlines() if line.strip()]
            if any(len(parts) != 2 for parts in lines):
                raise ValueError(f"{labels_name} must hold lines 'runNN/test/itemNN.png runNN/training/classNN.png'")
            classes = sorted({train for _, train in lines}, key=_number)
            index = {name: i for i, name in enumerate(classes)}
            try:
                support.append(np.stack([_decode_member(read, path, root + name, decoded_size)
                                         for name in classes]))
                query.append(np.stack([_decode_member(read, path, root + test, decoded_size)
                                       for test, _ in lines]))
            except KeyError as error:
                raise FileNotFoundError(f"{labels_name} names a missing image: {error}") from None
            support_y.append([index[name] for name in classes])
            query_y.append([index[train] for _, train in lines])
            run_names.append(run_dir)
    finally:
        if archive is not None:
            archive.close()
    if len({len(s) for s in support}) != 1 or len({len(q) for q in query}) != 1:
        raise ValueError("every run must have the same numbers of classes and test items")

    def to_x(arrays):
        images = torch.from_numpy(np.stack(arrays))
        if frame != "canvas":
            images = frame_characters(images, image_size, frame)
        return images.float().div_(255.0)[:, :, None]

    episode = Episode(to_x(support), torch.tensor(support_y), to_x(query), torch.tensor(query_y))
    return episode, run_names


def _number(name: str) -> int:
    digits = re.findall(r"\d+", posixpath.basename(name))
    return int(digits[-1]) if digits else 0

