"""Omniglot: the release's zip archives as one uint8 class tensor (Chapter 2, "Task distributions").

Omniglot (Lake, Salakhutdinov and Tenenbaum, 2015) has 1,623 handwritten characters from 50
alphabets, each drawn once by 20 people. The release ships them as zip archives of 105x105
black-on-white PNGs laid out ``<archive>/<Alphabet>/characterNN/<id>_<drawer>.png``. This
module reads those archives directly (nothing is unpacked), inverts them so that strokes are
bright on a dark background, resizes them, and caches the decoded tensor in a data folder.

Where archives are looked for, in order: the data folder (:func:`default_data_dir`), the
folder named by the environment variable ``MLBOOK_OMNIGLOT``, then a download from the
authors' GitHub release, verified against the published MD5 checksums.

It also reads Lake's twenty one-shot classification runs (``all_runs.zip``) as an episode.
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..tasks import Episode, alphabet_split
from ..utils import check_positive_int

__all__ = [
    "OmniglotData", "load_omniglot", "read_lake_runs", "alphabet_split", "default_data_dir",
    "find_archive", "download_archive", "extract_archive", "decode_image", "ARCHIVES",
    "BASE_URL",
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

# Bump when the decoded layout changes, so stale caches are never read.
_CACHE_VERSION = 1
_DOWNLOAD_TIMEOUT_S = 30


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
        dirs.append(Path(env).expanduser())
    return dirs


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=data_dir)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != ARCHIVES[name]:
            # Checked before the rename, so a bad download never takes the archive's name.
            raise ValueError(f"downloaded {name} from {url} has MD5 {digest.hexdigest()}, expected "
                             f"{ARCHIVES[name]}: the download is corrupt or truncated (nothing was kept)")
        _publish(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return target


def find_archive(name: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> Path:
    """Locate an archive given as a path or a name: data folder, ``$MLBOOK_OMNIGLOT``, download (Chapter 2)."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = Path(name).expanduser()
    if path.is_file():
        return path
    base = path.name
    if not base.endswith(".zip"):
        base += ".zip"
    searched = _search_dirs(data_dir)
    for folder in searched:
        if (folder / base).is_file():
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
def decode_image(data: bytes, image_size: int = 28) -> np.ndarray:
    """One release PNG -> uint8 ``[S, S]`` with bright strokes on a dark background (Chapter 2).

    Resizing uses a box filter (an area average), so thin strokes stay visible at 28x28.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L")
        if grey.size != (image_size, image_size):
            grey = grey.resize((image_size, image_size), Image.BOX)
        return 255 - np.asarray(grey, dtype=np.uint8)


_PNG = re.compile(r"(?:^|/)([^/]+)/(character\d+)/([^/]+_(\d+))\.png$")


def _read_archive(path: Path, image_size: int, seen: set[str], out: dict) -> None:
    with _open_zip(path) as archive:
        groups: dict[str, list[tuple[int, str]]] = {}
        for name in archive.namelist():
            match = _PNG.search(name)
            if match:
                alphabet, character, _, drawer = match.groups()
                groups.setdefault(f"{alphabet}/{character}", []).append((int(drawer), name))
        if not groups:
            raise ValueError(f"archive {str(path)!r} holds no Omniglot images "
                             f"(<Alphabet>/characterNN/<id>_<drawer>.png)")
        for key in sorted(groups):
            if key in seen:  # small1 and small2 share Greek and Latin: count them once
                continue
            members = sorted(groups[key])
            try:
                images = [decode_image(archive.read(name), image_size) for _, name in members]
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as error:
                raise ValueError(f"archive {str(path)!r} is corrupt or truncated: reading {key} failed "
                                 f"({error}); delete it and fetch it again") from None
            seen.add(key)
            out.setdefault(len(images), []).append((key, np.stack(images)))


def _publish(tmp: str, path: Path) -> None:
    """Give a finished temporary file its final name in one step (readers never see half a file)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; data files are shareable
    os.replace(tmp, path)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_omniglot(archives: Sequence[str | os.PathLike] | str = ("images_background_small1.zip",
                                                                   "images_background_small2.zip"),
                  image_size: int = 28, data_dir: str | os.PathLike | None = None,
                  download: bool = True, cache: bool = True) -> OmniglotData:
    """Load Omniglot characters from the release's archives as one class tensor (Chapter 2).

    ``archives`` are names (looked for in ``data_dir``, then ``$MLBOOK_OMNIGLOT``, then
    downloaded when ``download``) or paths. A character in several archives is counted once:
    the two minimal splits give 136 + 156 characters but 242 distinct ones (8 alphabets).
    The decoded tensor is cached in ``data_dir`` (written atomically).
    """
    image_size = check_positive_int("image_size", image_size)
    if isinstance(archives, (str, os.PathLike)):
        archives = (archives,)
    archives = list(archives)
    if not archives:
        raise ValueError(f"archives must name at least one archive, e.g. {', '.join(ARCHIVES)}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    paths = [find_archive(name, data_dir, download) for name in archives]

    key = hashlib.sha256(f"v{_CACHE_VERSION}:{image_size}".encode())
    for path in paths:
        key.update(f"|{path.name}:{path.stat().st_size}:{_md5(path)}".encode())
    cache_path = data_dir / f"omniglot-{image_size}px-{key.hexdigest()[:16]}.pt"
    if cache and cache_path.is_file():
        try:
            stored = torch.load(cache_path, weights_only=True)
            return OmniglotData(stored["images"], list(stored["alphabets"]), list(stored["characters"]))
        except Exception:  # an unreadable cache is rebuilt, never trusted
            pass

    seen: set[str] = set()
    by_count: dict[int, list] = {}
    for path in paths:
        _read_archive(path, image_size, seen, by_count)
    if len(by_count) != 1:
        counts = {count: len(items) for count, items in by_count.items()}
        raise ValueError(f"characters have different numbers of drawings ({counts} characters per count); "
                         f"the archives are not Omniglot's release")
    items = next(iter(by_count.values()))
    characters = [key for key, _ in items]
    images = torch.from_numpy(np.stack([array for _, array in items]))
    data = OmniglotData(images, [c.split("/")[0] for c in characters], characters)
    if cache:
        try:
            _atomic_save({"images": data.images, "alphabets": data.alphabets,
                          "characters": data.characters}, cache_path)
        except OSError:  # a read-only data folder still gives the data, just uncached
            pass
    return data


# -- Lake's one-shot classification runs ------------------------------------------------------
_RUN = re.compile(r"(?:^|/)run(\d+)/class_labels\.txt$")


def read_lake_runs(path: str | os.PathLike, image_size: int = 28) -> tuple[Episode, list[str]]:
    """Lake et al.'s one-shot runs as one episode batch: 20 runs of 20-way 1-shot (Chapter 2).

    ``path`` is ``all_runs.zip`` or its unpacked folder, holding ``runNN/training/classNN.png``
    (one drawing per class: the support set), ``runNN/test/itemNN.png`` (the queries) and
    ``runNN/class_labels.txt`` (lines ``runNN/test/itemNN.png runNN/training/classNN.png``).
    Support labels are the class numbers minus one; query labels follow class_labels.txt.
    Images are float in [0, 1], bright strokes on dark, ``[runs, 20, 1, S, S]``.
    """
    image_size = check_positive_int("image_size", image_size)
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
                support.append(np.stack([decode_image(read(root + name), image_size) for name in classes]))
                query.append(np.stack([decode_image(read(root + test), image_size) for test, _ in lines]))
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
    to_x = lambda arrays: torch.from_numpy(np.stack(arrays)).float().div_(255.0)[:, :, None]  # noqa: E731
    episode = Episode(to_x(support), torch.tensor(support_y), to_x(query), torch.tensor(query_y))
    return episode, run_names


def _number(name: str) -> int:
    digits = re.findall(r"\d+", posixpath.basename(name))
    return int(digits[-1]) if digits else 0

