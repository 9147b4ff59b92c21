"""The data cache: checksums, atomic writes and a clear error offline (no network used)."""
import hashlib
import urllib.error
import urllib.request

import pytest

from gptlib import datasets


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLIB_DATA_DIR", str(tmp_path))
    return tmp_path


def _serve(monkeypatch, payload: bytes):
    class Response:
        def __init__(self):
            self.data = payload
        def read(self, n=-1):
            chunk, self.data = self.data[:n], self.data[n:]
            return chunk
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
    calls = []
    def urlopen(url, timeout=None):
        calls.append(url)
        return Response()
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def _offline(monkeypatch):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_download_is_checked_and_cached(cache, monkeypatch):
    payload = b"To be, or not to be\n" * 100
    digest = hashlib.sha256(payload).hexdigest()
    calls = _serve(monkeypatch, payload)
    path = datasets.fetch_url("https://example.org/x.txt", "x.txt", digest, len(payload))
    assert path == cache / "x.txt" and path.read_bytes() == payload
    again = datasets.fetch_url("https://example.org/x.txt", "x.txt", digest, len(payload))
    assert again == path and len(calls) == 1, "a good cached copy is reused, not downloaded again"


def test_checksum_mismatch_leaves_nothing_behind(cache, monkeypatch):
    _serve(monkeypatch, b"tampered content")
    with pytest.raises(datasets.ChecksumError, match="sha256"):
        datasets.fetch_url("https://example.org/x.txt", "x.txt", "0" * 64)
    assert list(cache.iterdir()) == [], "no partial or corrupt file may stay in the cache"


def test_size_mismatch_leaves_nothing_behind(cache, monkeypatch):
    payload = b"short"
    _serve(monkeypatch, payload)
    with pytest.raises(datasets.ChecksumError, match="bytes"):
        datasets.fetch_url("https://example.org/x.txt", "x.txt",
                           hashlib.sha256(payload).hexdigest(), size=999)
    assert list(cache.iterdir()) == []


def test_corrupt_cached_copy_is_refused(cache, monkeypatch):
    (cache / "x.txt").write_bytes(b"corrupt")
    _offline(monkeypatch)
    with pytest.raises(datasets.ChecksumError, match="delete it"):
        datasets.fetch_url("https://example.org/x.txt", "x.txt", "1" * 64)


def test_offline_error_says_what_to_download_and_where(cache, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(datasets.DatasetUnavailableError) as err:
        datasets.fetch("tinyshakespeare")
    message = str(err.value)
    spec = datasets.DATASETS["tinyshakespeare"]
    assert spec.url in message and str(cache / spec.filename) in message
    assert "GPTLIB_DATA_DIR" in message and spec.sha256 in message
    assert list(cache.iterdir()) == []


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="tinyshakespeare"):
        datasets.fetch("wikipedia")


def test_mirror_is_used_when_present(monkeypatch):
    # ../shared/data (set by conftest or CI) holds a checked copy of Tiny Shakespeare
    import os
    if not os.environ.get("GPTLIB_DATA_DIR"):
        pytest.skip("no offline mirror configured")
    _offline(monkeypatch)
    text = datasets.load_text("tinyshakespeare")
    assert len(text.encode("utf-8")) == 1_115_394 and text.startswith("First Citizen:")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("GPTLIB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / "gptlib" / "data"
