"""Download data sets by name, check them by SHA-256 and keep them in a cache.

Hand-written (not exported from a notebook).

* Each data set has one canonical address, a size and a SHA-256 digest (``DATASETS``).
* ``GPTLIB_DATA_DIR`` (if set) is searched first: a folder holding a mirror, e.g. for offline use.
  The cache folder is ``GPTLIB_DATA_DIR`` when it is set, else ``~/.cache/gptlib/data``
  (models the chapters train are kept apart, see :func:`gptlib.runtime.artifact_dir`).
* A download is written to a temporary file beside its target, checked, then renamed into place,
  so the cache never holds a partial or corrupt file.
* Offline with no copy, one clear error says what to download and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gptlib.runtime import atomic_write

__all__ = ["Dataset", "DATASETS", "DatasetUnavailableError", "ChecksumError",
           "cache_dir", "fetch", "fetch_url", "load_text", "sha256_of"]


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    filename: str
    sha256: str
    size: int | None = None
    description: str = ""


DATASETS: dict[str, Dataset] = {
    "tinyshakespeare": Dataset(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        filename="tinyshakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
        description="Tiny Shakespeare: 40,000 lines of Shakespeare's plays (char-rnn).",
    ),
}


class DatasetUnavailableError(RuntimeError):
    """The data set is not cached and could not be downloaded."""


class ChecksumError(RuntimeError):
    """A file's SHA-256 (or size) is not the one expected."""


def cache_dir() -> Path:
    """Where downloads are kept: ``GPTLIB_DATA_DIR`` if set, else ``~/.cache/gptlib/data``."""
    env = os.environ.get("GPTLIB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gptlib" / "data"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str, size: int | None, timeout: float) -> None:
    """Stream ``url`` into ``target`` through :func:`gptlib.runtime.atomic_write`, checking its size
    and SHA-256 before the file takes its name: a failed check leaves nothing behind."""
    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        got_size = tmp.stat().st_size
        if size is not None and got_size != size:
            raise ChecksumError(f"{url} gave {got_size:,} bytes, expected {size:,}; nothing was saved")
        if digest.hexdigest() != sha256:
            raise ChecksumError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}; "
                                "nothing was saved")

    atomic_write(target, write)


def fetch_url(url: str, filename: str, sha256: str, size: int | None = None,
              timeout: float = 60.0) -> Path:
    """Return a local path to ``url``'s content, checked against ``sha256``.

    A cached copy is reused only if its checksum matches; a mismatching copy is never returned.
    """
    target = cache_dir() / filename
    if target.exists():
        if sha256_of(target) == sha256:
            return target
        raise ChecksumError(
            f"{target} exists but its sha256 is not {sha256}. It is corrupt or a different file: "
            f"delete it and run again to download {url}")
    try:
        _download(url, target, sha256, size, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DatasetUnavailableError(
            f"Could not download {url} ({err}).\n"
            f"To work offline, download that file yourself and save it as {target} "
            f"(or put it in a folder and point GPTLIB_DATA_DIR at that folder). "
            f"Expected sha256: {sha256}") from err
    return target


def fetch(name: str, timeout: float = 60.0) -> Path:
    """Return the local path of data set ``name``, downloading and checking it on first use."""
    try:
        spec = DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}") from None
    return fetch_url(spec.url, spec.filename, spec.sha256, spec.size, timeout)


def load_text(name: str) -> str:
    """The data set ``name`` as a string (UTF-8)."""
    return fetch(name).read_text(encoding="utf-8")
