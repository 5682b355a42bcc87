"""Artifacts under hostile files and process faults: size limits, member headers, kill -9 during save,
concurrent saves, overwrite of a non-artifact, file modes."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from calib import artifacts
from calib.artifacts import ArtifactError, load_pipeline, read_manifest, save_artifact
from calib.calibrators import IdentityCalibrator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ident():
    x = np.eye(3, dtype=np.float32) * 4
    return IdentityCalibrator().fit(x, [0, 1, 2])


def _rehash(path):
    """Recompute every checksum, as anyone editing an artifact can."""
    m = json.loads((path / "manifest.json").read_text())
    m["files"] = {name: artifacts._sha256_file(path / name) for name in m["files"]}
    m["manifest_sha256"] = artifacts._manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _edit(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))
    _rehash(path)


def _npy_bytes(array=None, *, header_shape=None, dtype="<f8", body=b""):
    buf = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buf, array, allow_pickle=False)
        return buf.getvalue()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + body


def _write_members(path, members, compress=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path / "arrays.npz", "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _with_array(tmp_path, ident, name="art"):
    """An artifact whose calibrator entry declares one array ``calibrator.w`` (no calibrator reads it, so
    it is refused as an unexpected field after the loader's own checks pass)."""
    path = save_artifact(ident, tmp_path / name)
    _edit(path, lambda m: m["components"]["calibrator"].update(arrays={"w": {"dtype": "<f8", "shape": [2]}}))
    return path


# --- loading: size limits and member headers ------------------------------------------------------------

def test_a_header_claiming_a_terabyte_is_refused_before_reading(tmp_path, ident):
    path = _with_array(tmp_path, ident)
    _write_members(path, {"calibrator.w.npy": _npy_bytes(header_shape=(1 << 37,), body=b"\0" * 64)})
    _edit(path, lambda m: m["components"]["calibrator"].update(arrays={"w": {"dtype": "<f8", "shape": [1 << 37]}}))
    assert (path / "arrays.npz").stat().st_size < 1000
    t = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"calibrator\.w.*header for 1099511627776 data bytes in a member holding 64"):
        load_pipeline(path)
    assert time.perf_counter() - t < 5  # nothing was inflated


def test_a_zip_bomb_is_capped_by_max_bytes(tmp_path, ident):
    path = _with_array(tmp_path, ident)
    big = np.zeros(8 << 20)  # 64 MiB of zeros deflate to ~64 KiB
    _write_members(path, {"calibrator.w.npy": _npy_bytes(big)})
    _edit(path, lambda m: m["components"]["calibrator"].update(arrays={"w": {"dtype": "<f8", "shape": [8 << 20]}}))
    assert (path / "arrays.npz").stat().st_size < 1 << 20
    with pytest.raises(ArtifactError, match=r"at most max_bytes=1048576 bytes of arrays .* declaring 67108992"):
        load_pipeline(path, max_bytes=1 << 20)
    # within the cap the loader reads it, and the calibrator then refuses a field it never writes
    with pytest.raises(ArtifactError, match=r"Unexpected state of IdentityCalibrator.*\['w'\]"):
        load_pipeline(path, max_bytes=1 << 27)


def test_the_default_cap_is_documented_and_applies(tmp_path, ident, monkeypatch):
    path = _with_array(tmp_path, ident)
    _write_members(path, {"calibrator.w.npy": _npy_bytes(np.zeros(2))})
    _rehash(path)
    monkeypatch.setattr(artifacts, "MAX_LOAD_BYTES", 100)
    with pytest.raises(ArtifactError, match="max_bytes=100"):
        load_pipeline(path)
    assert "MAX_LOAD_BYTES" in artifacts.__doc__ and "max_bytes" in load_pipeline.__doc__


@pytest.mark.parametrize("member,declared,match", [
    (_npy_bytes(np.zeros(2, np.float32)), {"dtype": "<f8", "shape": [2]}, r"dtype float32 shape \(2,\), the manifest declares dtype float64"),
    (_npy_bytes(np.zeros(3)), {"dtype": "<f8", "shape": [2]}, r"shape \(3,\), the manifest declares"),
    (_npy_bytes(header_shape=(2,), body=b"\0" * 8), {"dtype": "<f8", "shape": [2]}, "header for 16 data bytes in a member holding 8"),
    (b"not an npy at all", {"dtype": "<f8", "shape": [2]}, "Expected a valid .npy member 'calibrator.w'"),
    (_npy_bytes(header_shape=(2,), dtype="|O", body=b"\0" * 16), {"dtype": "<f8", "shape": [2]},
     r"dtype object \(artifacts hold numeric and string arrays only\)"),
], ids=["dtype", "shape", "short-body", "garbage", "object-dtype"])
def test_member_headers_are_checked_against_the_manifest(tmp_path, ident, member, declared, match):
    path = _with_array(tmp_path, ident)
    _write_members(path, {"calibrator.w.npy": member})
    _edit(path, lambda m: m["components"]["calibrator"].update(arrays={"w": declared}))
    with pytest.raises(ArtifactError, match=match):
        load_pipeline(path)


@pytest.mark.parametrize("spec", [{"dtype": "|O", "shape": [2]}, {"dtype": "<f8", "shape": [-1]},
                                  {"dtype": "<f8"}, "w", {"dtype": "<f8", "shape": [2], "extra": 1},
                                  {"dtype": "nonsense", "shape": [2]}])
def test_malformed_array_specs_are_refused(tmp_path, ident, spec):
    path = _with_array(tmp_path, ident)
    _edit(path, lambda m: m["components"]["calibrator"].update(arrays={"w": spec}))
    with pytest.raises(ArtifactError, match=r"Expected components\.calibrator\.arrays\.w as \{dtype"):
        load_pipeline(path)


def test_members_the_manifest_does_not_name_are_never_read(tmp_path, ident):
    path = save_artifact(ident, tmp_path / "art")
    evil = io.BytesIO()
    np.save(evil, np.array([object()], dtype=object), allow_pickle=True)
    _write_members(path, {"evil.npy": evil.getvalue(), "calibrator.x.npy": b"\0" * 10})
    _rehash(path)
    assert type(load_pipeline(path)["calibrator"]) is IdentityCalibrator


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["components"]["calibrator"].update(arrays={"w": {"dtype": "<f8", "shape": [2]}}),
     r"Array 'calibrator\.w' listed in the manifest is missing"),
    (lambda m: m["components"].update(calibrator=[1, 2]), r"Expected components\.calibrator .* as a table"),
    (lambda m: m["components"]["calibrator"].update(state=[1]), r"Expected components\.calibrator .* as a table"),
    (lambda m: m["components"]["calibrator"].update(params="x"), r"Expected components\.calibrator .* as a table"),
    (lambda m: m["components"]["calibrator"].update(arrays=7), r"Expected components\.calibrator\.arrays as a table"),
    (lambda m: m.update(class_names=["a", "b"]), r"Expected class_names .* as 3 strings"),
    (lambda m: m.update(class_names=[1, 2, 3]), r"Expected class_names .* as 3 strings"),
    (lambda m: m.update(n_classes=4), r"fitted on n_classes=4 \(the manifest's\), got 3"),
    (lambda m: m["components"]["calibrator"]["state"].update(n_classes=-3), r"'n_classes' .* >= 2, got -3"),
    (lambda m: m["components"]["calibrator"]["state"].update(n_classes="3"), r"'n_classes' .* as an integer"),
    (lambda m: m["components"]["calibrator"]["state"].pop("n_classes"), r"'n_classes' .* to be present"),
    (lambda m: m["components"]["calibrator"]["state"].update(extra=1), r"Unexpected state of IdentityCalibrator"),
    (lambda m: m["components"]["calibrator"]["params"].update(evil="os.system"), r"Could not rebuild calibrator"),
    (lambda m: m["components"].update(runtime={"kind": "x"}), r"Unknown components \['runtime'\]"),
    (lambda m: m["components"]["calibrator"].update(kind=["temperature"]), r"Unsupported calibrator kind"),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "points outside the artifact folder"),
    (lambda m: m.update(files=[]), r"Expected a 'files' table"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else str(v)[:30])
def test_edited_manifests_with_recomputed_checksums_are_refused(tmp_path, ident, edit, match):
    path = save_artifact(ident, tmp_path / "art")
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    if isinstance(m.get("files"), dict):
        m["files"] = {k: (artifacts._sha256_file(path / k) if (path / k).is_file() else v) for k, v in m["files"].items()}
    m["manifest_sha256"] = artifacts._manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=match):
        load_pipeline(path)


def test_unreadable_files_and_a_huge_manifest(tmp_path, ident, monkeypatch):
    path = save_artifact(ident, tmp_path / "art")
    (path / "arrays.npz").write_bytes(b"PK\x03\x04 truncated")
    _rehash(path)
    with pytest.raises(ArtifactError, match=r"Expected arrays\.npz as a zip of \.npy members, got an unreadable"):
        load_pipeline(path)
    monkeypatch.setattr(artifacts, "_MAX_MANIFEST_BYTES", 100)
    with pytest.raises(ArtifactError, match="Expected manifest.json of at most 100 bytes"):
        read_manifest(path)
    with pytest.raises(TypeError, match="Expected max_bytes as a positive integer"):
        load_pipeline(path, max_bytes=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_pipeline(tmp_path / "file")


# --- saving: overwrite only an artifact, exclusive creation, modes ------------------------------------------

@pytest.mark.parametrize("make,what", [
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "a folder that is not an artifact"),
    (lambda p: p.write_text("mine"), "a file"),
    (lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"format": "other"}')), "a folder that is not an artifact"),
    (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{bad")), "a folder that is not an artifact"),
    (lambda p: (p.parent.joinpath("target").mkdir(), p.symlink_to(p.parent / "target")), "a symlink"),
], ids=["folder", "file", "other-format", "bad-json", "symlink"])
def test_overwrite_replaces_only_an_artifact(tmp_path, ident, make, what):
    path = tmp_path / "out"
    make(path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(FileExistsError, match=f"Refusing to overwrite .*got {what}"):
        save_artifact(ident, path, overwrite=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # untouched


def test_concurrent_exclusive_saves_one_wins(tmp_path, ident):
    path, barrier = tmp_path / "art", threading.Barrier(8)
    results = [None] * 8

    def save(i):
        barrier.wait()
        try:
            save_artifact(ident, path, metrics={"who": i})
            results[i] = "ok"
        except FileExistsError as err:
            results[i] = str(err)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [i for i, r in enumerate(results) if r == "ok"]
    assert len(winners) == 1, results
    assert all("exists" in r for r in results if r != "ok")
    assert read_manifest(path)["metrics"] == {"who": winners[0]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_concurrent_overwrites_all_land_and_leave_one_whole_artifact(tmp_path, ident, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(artifacts, "_renameat2", lambda *a: False)
    path = save_artifact(ident, tmp_path / "art", metrics={"who": -1})
    barrier, errors = threading.Barrier(6), []

    def save(i):
        barrier.wait()
        for _ in range(5):
            try:
                save_artifact(ident, path, overwrite=True, metrics={"who": i})
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(err))
            try:
                artifacts.read_manifest(path)  # readers between saves always find a whole artifact
            except Exception as err:  # noqa: BLE001
                errors.append("reader: " + repr(err))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if exchange:
        assert errors == []
    else:  # two renames: a concurrent overwrite is refused loudly, and a reader may find the path empty for an
        # instant (documented: only renameat2's exchange makes concurrent replacement seamless)
        assert all(e.startswith(("FileExistsError", "reader: Artifact")) for e in errors), errors
    assert read_manifest(path)["metrics"]["who"] in range(6)
    assert type(load_pipeline(path)["calibrator"]) is IdentityCalibrator
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_exclusive_save_without_renameat2_still_refuses_a_folder_created_meanwhile(tmp_path, ident, monkeypatch):
    monkeypatch.setattr(artifacts, "_renameat2", lambda *a: False)
    path = tmp_path / "art"
    real = artifacts._write_npz

    def racing_writer(p, arrays):  # another process publishes first, while this save writes
        real(p, arrays)
        if not path.exists():
            path.mkdir()
            (path / "theirs").write_text("x")

    monkeypatch.setattr(artifacts, "_write_npz", racing_writer)
    with pytest.raises(FileExistsError, match="another save created it"):
        save_artifact(ident, path)
    assert (path / "theirs").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_overwrite_without_renameat2_replaces_and_cleans(tmp_path, ident, monkeypatch):
    monkeypatch.setattr(artifacts, "_renameat2", lambda *a: False)
    path = save_artifact(ident, tmp_path / "art", metrics={"v": 1})
    save_artifact(ident, path, overwrite=True, metrics={"v": 2})
    assert read_manifest(path)["metrics"] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_follow_the_umask(tmp_path, ident, mask):
    from calib._atomic import write_json_atomic

    old = os.umask(mask)
    try:
        path = save_artifact(ident, tmp_path / "art", config_yaml="a: 1\n")
        write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
    for f in ("manifest.json", "arrays.npz", "config.yaml"):
        assert stat.S_IMODE((path / f).stat().st_mode) == 0o666 & ~mask, f
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o666 & ~mask


# --- process faults ----------------------------------------------------------------------------------------

SAVER = textwrap.dedent("""
    import sys, numpy as np
    from calib.artifacts import save_artifact
    from calib.calibrators import IdentityCalibrator
    ident = IdentityCalibrator().fit(np.eye(3, dtype=np.float32) * 4, [0, 1, 2])
    path, mode = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    i = 0
    while True:
        if mode == "overwrite":
            save_artifact(ident, path, overwrite=True, metrics={"i": i}, config_yaml="x: 1\\n" * 2000)
        else:
            save_artifact(ident, f"{path}{i}", metrics={"i": i}, config_yaml="x: 1\\n" * 2000)
        i += 1
""")


def _run_and_kill(tmp_path, mode, delay):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path / "art"), mode], stdout=subprocess.PIPE,
                            env=env)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(delay)
    proc.kill()  # SIGKILL: no finally blocks, no cleanup
    proc.wait()
    proc.stdout.close()


@pytest.mark.parametrize("seed", range(3))
def test_kill_9_during_overwrite_never_leaves_the_path_without_a_whole_artifact(tmp_path, ident, seed):
    rng = random.Random(seed)
    path = save_artifact(ident, tmp_path / "art", metrics={"i": -1})
    seen = set()
    for _ in range(6):
        _run_and_kill(tmp_path, "overwrite", rng.uniform(0.02, 0.4))
        seen.add(read_manifest(path)["metrics"]["i"])  # verified checksums: a whole artifact
        assert type(load_pipeline(path)["calibrator"]) is IdentityCalibrator
        for sib in tmp_path.iterdir():  # only the artifact and temp folders of the dead saver
            assert sib.name == "art" or sib.name.startswith(".art.tmp-"), sib.name
    assert len(seen) > 1  # the kills did land in the middle of a series of saves
    save_artifact(ident, path, overwrite=True, metrics={"i": "last"})  # the next save cleans up after the dead
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert read_manifest(path)["metrics"] == {"i": "last"}


def test_kill_9_during_first_saves_leaves_each_path_whole_or_absent(tmp_path):
    _run_and_kill(tmp_path, "new", 0.5)
    made = sorted(p for p in tmp_path.iterdir() if p.name.startswith("art"))
    assert made, "the saver wrote nothing before it was killed"
    for p in made:
        read_manifest(p)
        assert type(load_pipeline(p)["calibrator"]) is IdentityCalibrator


def test_a_crash_between_the_fallback_renames_is_repaired_by_the_next_save(tmp_path, ident):
    path = save_artifact(ident, tmp_path / "art", metrics={"v": "old"})
    script = textwrap.dedent(f"""
        import os, numpy as np
        from calib import artifacts
        from calib.calibrators import IdentityCalibrator
        artifacts._renameat2 = lambda *a: False
        real, calls = os.replace, []
        def dying_replace(a, b):
            real(a, b)
            calls.append(1)
            if len(calls) == 1:
                os._exit(9)  # killed after moving the old artifact aside, before the new one is in place
        artifacts.os.replace = dying_replace
        ident = IdentityCalibrator().fit(np.eye(3, dtype=np.float32) * 4, [0, 1, 2])
        artifacts.save_artifact(ident, {str(path)!r}, overwrite=True, metrics={{"v": "new"}})
    """)
    rc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
    assert rc == 9 and not path.exists()
    save_artifact(ident, path, overwrite=True, metrics={"v": "next"})
    assert read_manifest(path)["metrics"] == {"v": "next"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_temp_folders_of_live_saves_are_left_alone(tmp_path, ident):
    live = tmp_path / f".art.tmp-{artifacts._HOST}-{os.getppid()}-abc"
    other_host = tmp_path / ".art.tmp-elsewhere-1-abc"
    live.mkdir()
    other_host.mkdir()
    save_artifact(ident, tmp_path / "art")
    assert live.is_dir() and other_host.is_dir()


def test_an_artifact_that_vanishes_mid_read_is_artifact_not_found(tmp_path, ident, monkeypatch):
    """A concurrent save may move the folder between the existence checks and the read: the reader gets
    ArtifactNotFoundError (a FileNotFoundError and an ArtifactError), never a bare FileNotFoundError."""
    from pathlib import Path

    path = save_artifact(ident, tmp_path / "art")
    real = Path.read_bytes

    def vanished(self):
        if self.name == "manifest.json":
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", vanished)
    with pytest.raises(artifacts.ArtifactNotFoundError, match=r"disappeared while being read"):
        artifacts._read_manifest(path, artifacts.MAX_LOAD_BYTES)


def test_overwrite_without_exchange_when_a_third_save_publishes_between_the_two_renames(tmp_path, ident, monkeypatch):
    """The race CI once hit (OSError 39 escaping): this save moved the old artifact aside, its own rename failed
    (another save got there), and as it put the old artifact back a third save published at the path (ENOTEMPTY).
    It is refused as a concurrent overwrite, the third save's artifact stays whole, nothing is left beside it."""
    import errno
    import shutil

    monkeypatch.setattr(artifacts, "_renameat2", lambda *a: False)
    path = save_artifact(ident, tmp_path / "art", metrics={"who": -1})
    theirs = save_artifact(ident, tmp_path.parent / f"{tmp_path.name}_theirs", metrics={"who": 7})
    real, calls = os.replace, []

    def racing_replace(src, dst):
        calls.append((Path(src), Path(dst)))
        if len(calls) == 2:  # this save's tmp -> path: a second save had published (and a third moved it aside)
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(dst))
        if len(calls) == 3:  # this save puts the old artifact back: the third save publishes just before
            shutil.copytree(theirs, path)
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", racing_replace)
    with pytest.raises(FileExistsError, match="Another save replaced"):
        save_artifact(ident, path, overwrite=True, metrics={"who": 0})
    monkeypatch.setattr(artifacts.os, "replace", real)
    assert len(calls) == 3  # aside, publish (raced), put back (found the third save's artifact)
    assert read_manifest(path)["metrics"]["who"] == 7
    assert type(load_pipeline(path)["calibrator"]) is IdentityCalibrator
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
