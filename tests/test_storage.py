"""genray.storage.Location on local paths: naming, files, folders and Ray's view. The same
operations on S3 are in test_s3.py (moto's server)."""

import pickle
from pathlib import Path

import pytest

from genray.storage import Location, ObjectNotFound, cache_dir


def test_names_join_and_compare():
    s3 = Location("s3://bucket/a/b/")
    assert s3.on_s3 and (s3.bucket, s3.key) == ("bucket", "a/b") and str(s3) == "s3://bucket/a/b"
    assert str(s3 / "c" / "/d/") == "s3://bucket/a/b/c/d" and str(s3.join("c/d")) == "s3://bucket/a/b/c/d"
    assert s3.name == "b" and str(s3.parent) == "s3://bucket/a" and str(s3.parent.parent) == "s3://bucket"
    assert str(Location("s3://bucket") / "x") == "s3://bucket/x"
    assert Location(s3) == s3 and hash(Location("s3://bucket/a/b")) == hash(s3) and s3 != Location("bucket/a/b")
    assert s3.native() == "s3://bucket/a/b" and s3.resolved() is s3
    local = Location("runs/x")
    assert not local.on_s3 and local.path == Path("runs/x") and str(local / "y") == str(Path("runs/x/y"))
    assert local.name == "x" and local.parent == Location("runs") and local.native() == Path("runs/x")
    assert local.resolved().path == Path("runs/x").resolve() and Location(Path("runs/x")) == local
    assert pickle.loads(pickle.dumps(s3)) == s3 and pickle.loads(pickle.dumps(local)) == local
    with pytest.raises(ValueError, match="no bucket"):
        Location("s3:///key")
    with pytest.raises(ValueError, match="is on S3, not a local path"):
        s3.path


def test_local_files_and_folders(tmp_path):
    root = Location(tmp_path / "root")
    assert not root.exists() and not root.is_folder() and root.list() == []
    (root / "a" / "b.txt").write_text("hello")
    (root / "c.bin").write_bytes(b"\x00\x01")
    assert (root / "a" / "b.txt").read_text() == "hello" and (root / "c.bin").read_bytes() == b"\x00\x01"
    assert root.exists() and root.is_folder() and (root / "c.bin").exists()
    assert root.list() == ["a/b.txt", "c.bin"]
    assert not [p for p in tmp_path.rglob(".*")], "the atomic write left its temporary file"
    assert root.glob("*.bin") == [root / "c.bin"] and root.glob("*/b.*") == [root / "a" / "b.txt"]
    with pytest.raises(ObjectNotFound, match="missing.txt does not exist"):
        (root / "missing.txt").read_text()
    (root / "c.bin").remove()
    (root / "c.bin").remove()  # gone already: no error
    assert root.list() == ["a/b.txt"]
    with root.as_local_folder() as folder:
        assert folder == root.path
    copy = root.download_to(tmp_path / "copy")
    assert Location(copy).list() == ["a/b.txt"]
    with pytest.raises(ValueError, match="s3://"):
        root.upload_from(copy)


def test_local_create_remove_tree_and_writers_of_one_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    once = Location(tmp_path / "claims" / "1")
    assert once.create(b"first") and not once.create(b"second") and once.read_bytes() == b"first"
    # Writers of one file never write into each other's temporary file: one whole text wins.
    shared = Location(tmp_path / "alias.json")
    texts = [str(i).encode() * 10_000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(shared.write_bytes, texts))
    assert shared.read_bytes() in texts
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["1", "alias.json", "claims"], "temporary files left"
    Location(tmp_path / "claims").remove_tree()
    Location(tmp_path / "claims").remove_tree()  # one that is not there is no error
    assert not (tmp_path / "claims").exists() and shared.exists()


def test_local_views_for_ray_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENRAY_CACHE", str(tmp_path / "cache"))
    local = Location("runs")
    assert local.ray_storage() == (str(tmp_path / "runs"), None)
    assert local.pyarrow_path == str(tmp_path / "runs")
    assert local.from_ray(str(tmp_path / "runs" / "c")) == Location(tmp_path / "runs" / "c")
    assert local.mirror("runs") == tmp_path / "runs" and local.fetch(["x"]) == Path("runs")
    s3 = Location("s3://bucket/a")
    assert s3.pyarrow_path == "bucket/a" and s3.from_ray("bucket/a/c") == Location("s3://bucket/a/c")
    assert s3.mirror("runs") == cache_dir() / "runs" / "bucket" / "a" == tmp_path / "cache" / "runs" / "bucket" / "a"
