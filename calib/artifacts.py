"""Versioned, pickle-free artifacts: a folder that holds a fitted calibrator (and, later, the rest of
the pipeline) as JSON and ``.npz``.

Layout of ``artifact/``::

    manifest.json   format, schema_version, calib_version, created_utc, n_classes, class_names,
                    components {"calibrator": {"kind", "params", "state", "arrays": {name: {dtype, shape}}},
                                "conformal": {...}, "policy": {...}, "reference": {...}},
                    portable (every component predicts with numpy alone: calib.runtime serves it),
                    pipeline (schema 2: the input contract, the reliability table behind the confidence
                    bands, the probe rows ``calib verify`` recomputes; see calib.deploy),
                    data_fingerprint, metrics, files {name: sha256},
                    manifest_sha256 (digest of the rest of the manifest)
    arrays.npz      every component's arrays, keyed "<component>.<name>" (read with allow_pickle=False)
    config.yaml     optional provenance (never instantiated on load)
    signature.json  optional: HMAC-SHA256 of manifest.json's bytes under a key the team holds

Writing goes to a temporary sibling folder that is renamed into place, so a reader never sees half an
artifact: with ``overwrite=False`` the rename is exclusive (two concurrent saves cannot both succeed);
with ``overwrite=True`` it swaps the new folder with the old artifact in one step (Linux
``renameat2(RENAME_EXCHANGE)``), so the path is never empty, and it refuses to replace a folder that is
not an artifact. Temporary folders of saves whose process died are removed by the next save to the
same path. Files get the same mode as the rest of a run (the process umask).

Loading treats the folder as untrusted input: the sha256 of every listed file (checksums stop accidents,
not edits: anyone can recompute them), known format and schema version, only the ``arrays.npz`` members
the manifest names, each member's header (dtype, shape, byte count) checked against the manifest before
its data are read, the total decompressed size capped (:data:`MAX_LOAD_BYTES`, ``max_bytes=``), and every
component's state validated by its ``from_state`` (:mod:`calib.base`) as strictly as its constructor
validates parameters. No pickle, no ``hydra.utils.instantiate``.

Checksums stop accidents, not edits. Against edits, sign: ``save_artifact(..., key=...)`` (or the
environment variable ``CALIB_SIGNING_KEY`` / ``CALIB_SIGNING_KEY_FILE``) writes ``signature.json``, the
HMAC-SHA256 (standard library ``hmac``) of ``manifest.json``'s bytes, which list the sha256 of every other
file. Whenever a key is configured, loading requires a signature made with it and refuses a missing or
wrong one; without a key a signature is not checked (``calib inspect`` says so).

Versions: schema 1 (calib 0.1), 2 (0.2: the ``pipeline`` block) and 3 (0.3: a ``reference`` component,
:class:`calib.shift.ReferenceStats`, for monitoring) load; an artifact without a reference is still written as
schema 2, which calib 0.2 reads. A newer schema is refused naming the schema and the calib that wrote it.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from calib._chunks import CACHE, row_slices
from calib._atomic import umask
from calib._json import to_json

__all__ = ["save_artifact", "load_artifact", "load_pipeline", "read_manifest", "data_fingerprint", "content_id",
           "signing_key", "ArtifactError", "ArtifactNotFoundError", "SignatureError",
           "FORMAT", "SCHEMA_VERSION", "READABLE_SCHEMAS", "MAX_LOAD_BYTES", "KEY_ENV", "KEY_FILE_ENV"]

FORMAT = "calib.artifact"
#: The schema this calib writes; 2 added the ``pipeline`` block (input contract, reliability table, probe rows),
#: 3 the ``reference`` component (written only when there is one: otherwise the manifest is schema 2).
SCHEMA_VERSION = 3
#: The schemas this calib reads.
READABLE_SCHEMAS = (1, 2, 3)
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
SIGNATURE = "signature.json"
#: Environment variables naming the signing key: the key itself, or a file holding it.
KEY_ENV, KEY_FILE_ENV = "CALIB_SIGNING_KEY", "CALIB_SIGNING_KEY_FILE"
_MIN_KEY_BYTES = 16
#: Default cap on what :func:`load_pipeline` decompresses from ``arrays.npz`` (sum of the members it
#: reads) and on the size of ``manifest.json``; pass ``max_bytes=`` to load a larger artifact.
MAX_LOAD_BYTES = 1 << 30
_MAX_MANIFEST_BYTES = 64 << 20
_ARRAY_KINDS = "biufU"  # bool, integers, floats, fixed-width unicode (group ids): all readable without pickle


class ArtifactError(ValueError):
    """An artifact folder is missing, corrupted, tampered with or of an unsupported version."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """The artifact folder does not exist (or is not a folder)."""


class SignatureError(ArtifactError):
    """A signing key is configured and the artifact's signature is missing or was not made with it."""


def signing_key(key=None):
    """The signing key as bytes: ``key`` (bytes or str) when given, else the content of the file named by
    ``CALIB_SIGNING_KEY_FILE``, else ``CALIB_SIGNING_KEY``; None when none is configured. A key shorter than
    16 bytes is refused (it would be guessable)."""
    if key is None:
        path = os.environ.get(KEY_FILE_ENV, "").strip()
        if path:
            try:
                with open(path, "rb") as fh:
                    key, where = fh.read(1 << 16).rstrip(b"\r\n"), f"the file {path!r} named by {KEY_FILE_ENV}"
            except OSError as err:
                raise SignatureError(f"Expected a readable signing key file in {KEY_FILE_ENV}, got {path!r}: "
                                     f"{err.strerror or err}.") from None
        elif os.environ.get(KEY_ENV):
            key, where = os.environ[KEY_ENV].encode(), KEY_ENV
        else:
            return None
    else:
        where = "key="
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"Expected key as bytes or str, got {type(key).__name__}.")
    if len(key) < _MIN_KEY_BYTES:
        raise SignatureError(f"Expected a signing key of at least {_MIN_KEY_BYTES} bytes, got {len(key)} "
                             f"(from {where}).")
    return bytes(key)


def _sign(manifest_bytes, key):
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def _check_signature(path, manifest_bytes, key):
    """Refuse unless ``signature.json`` in ``path`` holds the HMAC of ``manifest_bytes`` under ``key``."""
    spath = path / SIGNATURE
    if not spath.is_file():
        raise SignatureError(f"Artifact {str(path)!r} is not signed, but a signing key is configured; refusing to "
                             f"load it (sign it with calib.artifacts.save_artifact(..., key=...), or unset "
                             f"{KEY_ENV} / {KEY_FILE_ENV} to load unsigned artifacts).")
    try:
        sig = json.loads(spath.read_bytes()[:4096].decode("utf-8"))
        algorithm, digest = sig["algorithm"], sig["hmac"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise SignatureError(f"Expected {SIGNATURE} in {str(path)!r} as {{algorithm, hmac}}, got an unreadable "
                             "file.") from None
    if algorithm != "hmac-sha256" or not isinstance(digest, str):
        raise SignatureError(f"Expected algorithm 'hmac-sha256' in {SIGNATURE} of {str(path)!r}, got {algorithm!r}.")
    if not hmac.compare_digest(digest, _sign(manifest_bytes, key)):
        raise SignatureError(f"Signature mismatch for {str(path)!r}: the artifact was modified after it was signed, "
                             "or signed with another key.")


def signature_status(path, key=None):
    """``"unsigned"``, ``"signed (not verified: no key configured)"`` or ``"signed, verified"`` (raises
    :class:`SignatureError` for a wrong or missing signature when a key is configured)."""
    path = Path(path)
    key = signing_key(key)
    if key is None:
        return "signed (not verified: no key configured)" if (path / SIGNATURE).is_file() else "unsigned"
    _check_signature(path, (path / MANIFEST).read_bytes(), key)
    return "signed, verified"


#: Pipeline components in the order they are applied; each has a registry ``<module>.REGISTRY``.
COMPONENTS = {"calibrator": "calib.calibrators", "conformal": "calib.conformal", "policy": "calib.policy",
              "reference": "calib.shift"}  # reference: calib.shift.ReferenceStats, what a monitor compares with


def _module(component):
    import importlib
    import importlib.util

    module = COMPONENTS[component]
    if importlib.util.find_spec(module) is None:
        raise ArtifactError(f"This calib has no {component!r} components (module {module} is missing).")
    return importlib.import_module(module)


def _registry(component):
    registry = _module(component).REGISTRY
    if component == "conformal":  # label-shift-weighted predictors live in calib.shift (it adapts calib.conformal)
        from calib.shift import CONFORMAL_REGISTRY

        registry = {**registry, **CONFORMAL_REGISTRY}
    return registry


def data_fingerprint(logits, labels):
    """sha256 over the calibration logits (as float32 bytes, C order), labels (int64) and shape.

    >>> data_fingerprint(np.zeros((2, 3), np.float32), np.array([0, 1]))["n_samples"]
    2
    """
    x = np.ascontiguousarray(np.asarray(logits, dtype=np.float32))
    y = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    h = hashlib.sha256()
    h.update(repr(x.shape).encode())
    for rows in row_slices(x.shape[0], x.shape[1], nbytes=CACHE):  # bounded memory for a memory-mapped input
        h.update(memoryview(x[rows]).cast("B"))
    h.update(memoryview(y).cast("B"))
    return {"sha256": h.hexdigest(), "n_samples": int(x.shape[0]), "n_classes": int(x.shape[1])}


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_json(obj, where):
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=True)
    except TypeError as err:
        raise TypeError(f"Expected JSON-serialisable {where}: {err}") from None


def _describe(component, obj):
    """(manifest entry, arrays) of one fitted component, checked against its registry."""
    registry = _registry(component)
    kind = getattr(obj, "kind", None)
    if kind not in registry or type(obj) is not registry[kind]:
        raise TypeError(
            f"Expected a {component} registered in {COMPONENTS[component]}.REGISTRY, got "
            f"{type(obj).__name__}; known kinds: {sorted(registry)}."
        )
    state, arrays = obj.get_state()
    arrays = {key: np.asarray(a) for key, a in arrays.items()}
    for key, a in arrays.items():
        if a.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"Refusing to store {a.dtype} array {component}.{key}: artifacts hold numeric and "
                            "fixed-width string arrays only (no objects: they would need pickle).")
    # Declared dtype and shape of each array: the loader checks every member's header against them.
    specs = {key: {"dtype": a.dtype.str, "shape": list(a.shape)} for key, a in sorted(arrays.items())}
    entry = {"kind": kind, "params": obj.get_params(), "state": state, "arrays": specs}
    return entry, arrays


def save_artifact(calibrator, path, *, conformal=None, policy=None, metrics=None, data_fingerprint=None,
                  class_names=None, config_yaml=None, overwrite=False, pipeline=None, key=None, reference=None):
    """Write a fitted pipeline (calibrator, optional conformal predictor and policy) to ``path`` atomically.

    Parameters
    ----------
    calibrator : Calibrator
        A fitted member of ``calib.calibrators.REGISTRY``.
    path : str or Path
        Destination folder; must not exist unless ``overwrite=True``.
    conformal, policy : optional
        Fitted members of ``calib.conformal.REGISTRY`` / ``calib.policy.REGISTRY``, applied after the
        calibrator.
    metrics : dict, optional
        Metrics at fit time, stored for provenance.
    data_fingerprint : dict, optional
        Output of :func:`data_fingerprint` on the calibration data.
    class_names : sequence of str, optional
    config_yaml : str, optional
        Resolved experiment config, kept as provenance only (never instantiated on load).
    overwrite : bool, default False
    pipeline : (dict, dict of arrays), optional
        The ``pipeline`` block of the manifest and its arrays (stored as ``pipeline.<name>``): written by
        :meth:`calib.deploy.FittedPipeline.save`.
    key : bytes or str, optional
        Signing key; default: :func:`signing_key` (``CALIB_SIGNING_KEY_FILE`` / ``CALIB_SIGNING_KEY``). With
        a key the artifact gets ``signature.json``.
    reference : calib.shift.ReferenceStats, optional
        Calibration reference statistics for monitoring a serving stream (schema 3; an artifact without one is
        written as schema 2, which older calib versions read).

    Returns
    -------
    Path of the artifact folder.
    """
    path = Path(path)
    key = signing_key(key)  # a bad key fails before anything is written
    _check_destination(path, overwrite)
    components, flat = {}, {}
    for name, obj in (("calibrator", calibrator), ("conformal", conformal), ("policy", policy),
                      ("reference", reference)):
        if obj is None:
            continue
        entry, arrays = _describe(name, obj)
        components[name] = entry
        for name_, a in arrays.items():
            flat[f"{name}.{name_}"] = a
    if "calibrator" not in components:
        raise TypeError("Expected a fitted calibrator as the first argument, got None.")
    n_classes = int(components["calibrator"]["state"]["n_classes"])
    for name, entry in components.items():
        if int(entry["state"]["n_classes"]) != n_classes:
            raise ValueError(f"Expected the {name} fitted on {n_classes} classes (as the calibrator), "
                             f"got {entry['state']['n_classes']}.")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != n_classes:
            raise ValueError(f"Expected {n_classes} class_names, got {len(class_names)}.")
    portable = all(type(obj).portable for obj in (calibrator, conformal, policy, reference) if obj is not None)
    if not portable:
        import warnings

        which = [f"{obj.kind!r}" for obj in (calibrator, conformal, policy) if obj is not None and not type(obj).portable]
        warnings.warn(f"Saving {', '.join(which)}: not portable. It needs its third-party package to predict, so "
                      f"this artifact loads in calib with that package installed, not in calib.runtime (numpy only).",
                      UserWarning, stacklevel=2)
    block = None
    if pipeline is not None:
        block, parrays = pipeline
        block = dict(block)
        parrays = {k: np.asarray(a) for k, a in parrays.items()}
        block["arrays"] = {k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in sorted(parrays.items())}
        for k, a in parrays.items():
            if a.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"Refusing to store {a.dtype} array pipeline.{k}: numeric arrays only.")
            flat[f"pipeline.{k}"] = a
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION if reference is not None else 2,
        "calib_version": _version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_classes": n_classes,
        "class_names": class_names,
        "components": components,
        "portable": portable,
        "pipeline": block,
        "data_fingerprint": data_fingerprint,
        "metrics": metrics,
    }
    _check_json(manifest, "artifact manifest (params, state, metrics)")
    manifest = to_json(manifest)  # strict JSON: one rule for non-finite numbers (calib._json)

    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(path, 'tmp')}", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700: colleagues could not read the run
        _write_npz(tmp / ARRAYS, flat)
        files = [ARRAYS]
        if config_yaml is not None:
            _write_synced(tmp / "config.yaml", config_yaml.encode())
            files.append("config.yaml")
        manifest["files"] = {name: _sha256_file(tmp / name) for name in files}
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
        _write_synced(tmp / MANIFEST, manifest_bytes)
        if key is not None:
            _write_synced(tmp / SIGNATURE, (json.dumps({"algorithm": "hmac-sha256", "hmac": _sign(manifest_bytes, key)},
                                                       indent=2) + "\n").encode())
        _fsync_dir(tmp)
        _publish(tmp, path, overwrite)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --- atomic, race-free publication ------------------------------------------------------------------
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src, dst, flags):
    """Linux ``renameat2``; returns False where the system has none (then the caller falls back)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else -1):
        return False  # kernel or file system without renameat2 / this flag
    raise OSError(err, os.strerror(err), str(dst))


def _publish(tmp, path, overwrite):
    """Move the finished folder ``tmp`` to ``path``: exclusively, or swapping with the old artifact."""
    if not overwrite or not path.exists():
        try:
            if not _renameat2(tmp, path, _RENAME_NOREPLACE):
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "exists", str(path))
                os.rename(tmp, path)  # a non-empty folder created since the check makes this fail (ENOTEMPTY)
        except OSError as err:
            if isinstance(err, FileExistsError) or err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(
                    f"Artifact folder {str(path)!r} exists (another save created it); pass overwrite=True to "
                    "replace it."
                ) from None
            raise
        return
    _check_destination(path, overwrite)  # still an artifact, checked again just before replacing it
    if _renameat2(tmp, path, _RENAME_EXCHANGE):  # one atomic swap: the path always holds an artifact
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old artifact
        return
    # No exchange on this system: two renames; the old artifact waits beside the path until the new one is
    # in place, and a save that finds it there after a crash restores it (_clean_stale).
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, "old"), dir=path.parent))
    try:
        os.replace(path, old / path.name)
        os.replace(tmp, path)
    except (FileNotFoundError, OSError) as err:
        if isinstance(err, FileNotFoundError) or err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            if not path.exists() and (old / path.name).is_dir():
                try:
                    os.replace(old / path.name, path)  # put ours back: the path is never left empty by this save
                except OSError as back:  # a third save published meanwhile: the path holds its whole artifact
                    if not (isinstance(back, FileExistsError) or back.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                        raise
            shutil.rmtree(old, ignore_errors=True)
            raise FileExistsError(
                f"Another save replaced {str(path)!r} at the same moment (this system has no atomic exchange "
                "rename); nothing of this save was kept: retry."
            ) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_destination(path, overwrite):
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"Artifact folder {str(path)!r} exists; pass overwrite=True to replace it.")
    if path.is_symlink() or not path.is_dir() or not _is_artifact(path):
        what = ("a symlink" if path.is_symlink() else "a folder that is not an artifact" if path.is_dir()
                else "a file" if path.exists() else None)
        if what is None:
            return  # gone since the first check (a concurrent save): nothing to protect
        raise FileExistsError(
            f"Refusing to overwrite {str(path)!r}: expected an artifact folder (with a calib {MANIFEST}), got {what}."
        )


def _is_artifact(path):
    try:
        with open(path / MANIFEST, "rb") as fh:
            return json.loads(fh.read(_MAX_MANIFEST_BYTES)).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"


def _temp_prefix(path, what):
    return f".{path.name}.{what}-{_HOST}-{os.getpid()}-"


def _clean_stale(path):
    """Remove temporary folders beside ``path`` left by saves on this host whose process has died; an old
    artifact moved aside by a save that died before the new one was in place is put back."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(tmp|old)-{re.escape(_HOST)}-(\d+)-[^/]*$")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sib in siblings:
        m = pattern.match(sib.name)
        if not m or _alive(int(m.group(2))):
            continue
        moved = sib / path.name
        if m.group(1) == "old" and not path.exists() and moved.is_dir():
            try:
                os.rename(moved, path)
            except OSError:
                pass
        shutil.rmtree(sib, ignore_errors=True)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_synced(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_npz(path, arrays):
    # Deterministic bytes (fixed member timestamps), no pickle.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


#: Manifest fields that identify what an artifact holds (not when or by which calib it was written, nor the
#: metrics stored beside it): two saves of the same fit have the same :func:`content_id`.
_CONTENT_FIELDS = ("format", "schema_version", "n_classes", "class_names", "components", "data_fingerprint", "files",
                   "pipeline")


def content_id(manifest):
    """sha256 of what an artifact holds: its components (kinds, params, state), array and config file digests,
    class names and data fingerprint; not its creation time, calib version or stored metrics.

    Deterministic for a deterministic fit, so ``metrics.json`` can carry it (``artifact_id``) without
    losing byte-identical reruns, and a reader can tell whether a metrics file and an artifact belong to
    the same run. Pass a manifest from :func:`read_manifest` (verified checksums) or a path.
    """
    if not isinstance(manifest, dict):
        manifest = read_manifest(manifest)
    body = {k: manifest.get(k) for k in _CONTENT_FIELDS if k in manifest or k != "pipeline"}  # schema-1 ids unchanged
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def _manifest_digest(manifest):
    """sha256 of the manifest's canonical JSON without its own digest (detects edits of params/state)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def read_manifest(path, *, max_bytes=None, key=None):
    """Read and check ``manifest.json`` and the sha256 of every file it lists; return the manifest.

    ``max_bytes`` (default :data:`MAX_LOAD_BYTES`) caps the size of each listed file. With a signing key
    (``key`` or :func:`signing_key`'s environment variables) the signature must match.
    """
    path = Path(path)
    cap = _check_cap(max_bytes)
    key = signing_key(key)
    return _retry_if_replaced(path, lambda: _read_manifest(path, cap, key))


def _read_manifest(path, cap, key=None):
    mpath = path / MANIFEST
    if not path.is_dir():
        raise ArtifactNotFoundError(f"Expected an artifact folder with {MANIFEST}, got {str(path)!r} without one "
                                    f"({'not a folder' if path.exists() else 'it does not exist'}).")
    if not mpath.is_file():
        raise ArtifactError(f"Expected an artifact folder with {MANIFEST}, got {str(path)!r} without one.")
    try:
        size = mpath.stat().st_size
        if size > _MAX_MANIFEST_BYTES:
            raise ArtifactError(f"Expected {MANIFEST} of at most {_MAX_MANIFEST_BYTES} bytes in {str(path)!r}, got "
                                f"{size} bytes.")
        raw = mpath.read_bytes()
    except FileNotFoundError:  # the folder moved between the checks above and the read (a concurrent save)
        raise ArtifactNotFoundError(f"Expected an artifact folder with {MANIFEST}, got {str(path)!r}: it disappeared "
                                    "while being read (replaced by a concurrent save?); retry.") from None
    if key is not None:  # before anything else is believed: an edit with recomputed checksums stops here
        _check_signature(path, raw, key)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ArtifactError(f"Corrupted {MANIFEST} in {str(path)!r}: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"Expected format {FORMAT!r} in {str(mpath)!r}, got {manifest.get('format') if isinstance(manifest, dict) else manifest!r}."
        )
    version = manifest.get("schema_version")
    if version not in READABLE_SCHEMAS or isinstance(version, bool):
        writer = manifest.get("calib_version")
        newer = isinstance(version, int) and not isinstance(version, bool) and version > max(READABLE_SCHEMAS)
        raise ArtifactError(
            f"Unsupported artifact schema_version {version!r} (written by calib {writer!r:.40}) in {str(mpath)!r}; "
            f"this calib {_version()} reads schema versions {list(READABLE_SCHEMAS)}"
            + ("; upgrade calib to load it." if newer else ".")
        )
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise ArtifactError(
            f"Checksum mismatch for {MANIFEST} in {str(path)!r}: its content does not match its manifest_sha256 "
            "(the manifest was corrupted or modified)."
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or ARRAYS not in files:
        raise ArtifactError(f"Expected a 'files' table listing {ARRAYS} in {str(mpath)!r}.")
    root = path.resolve()
    for name, digest in files.items():
        fpath = (path / str(name)).resolve()
        if root not in fpath.parents:
            raise ArtifactError(f"Refusing file {name!r} in {str(mpath)!r}: it points outside the artifact folder.")
        if not fpath.is_file():
            raise ArtifactError(f"Artifact file {name!r} listed in the manifest is missing from {str(path)!r}.")
        if fpath.stat().st_size > cap:
            raise ArtifactError(f"Expected {name!r} in {str(path)!r} of at most max_bytes={cap} bytes, got "
                                f"{fpath.stat().st_size}; pass max_bytes= to load a larger artifact.")
        actual = _sha256_file(fpath)
        if actual != digest:
            raise ArtifactError(
                f"Checksum mismatch for {name!r} in {str(path)!r}: expected sha256 {digest}, got {actual} "
                "(the file was corrupted or modified)."
            )
    return manifest


def _check_cap(max_bytes):
    if max_bytes is None:
        return MAX_LOAD_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise TypeError(f"Expected max_bytes as a positive integer (bytes), got {max_bytes!r}.")
    return max_bytes


def _array_specs(entry, where):
    """``{name: (dtype or None, shape or None)}`` of a component's arrays as the manifest declares them
    (artifacts written before specs were recorded list names only)."""
    declared = entry.get("arrays", [])
    if isinstance(declared, list) and all(isinstance(k, str) for k in declared):
        return {k: (None, None) for k in declared}
    if not isinstance(declared, dict):
        raise ArtifactError(f"Expected {where}.arrays as a table of array specs, got {type(declared).__name__}.")
    specs = {}
    for key, spec in declared.items():
        try:
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(d) for d in spec["shape"])
            if dtype.kind not in _ARRAY_KINDS or any(d < 0 for d in shape) or set(spec) != {"dtype", "shape"}:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise ArtifactError(f"Expected {where}.arrays.{key} as {{dtype: numeric, shape: [int, ...]}}, got "
                                f"{spec!r}.") from None
        specs[key] = (dtype, shape)
    return specs


def _read_members(npz_path, wanted, cap, digest):
    """Read only the ``wanted`` members ``{member: (dtype, shape)}`` of ``npz_path``, each header checked
    against its declaration and its byte count before any data are read, the total capped at ``cap``.

    The file is read once into memory (its size was capped by :func:`read_manifest`) and its sha256 checked
    against ``digest`` from the manifest on those very bytes, so the arrays always belong to that manifest.
    """
    where = str(npz_path)
    try:
        with open(npz_path, "rb") as fh:
            data = fh.read(cap + 1)
    except OSError as err:
        raise ArtifactError(f"Artifact file {ARRAYS!r} listed in the manifest is missing or unreadable: {err}") from None
    if len(data) > cap or hashlib.sha256(data).hexdigest() != digest:
        raise ArtifactError(f"Checksum mismatch for {ARRAYS!r} at {where!r}: it changed after its manifest was read.")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as err:
        raise ArtifactError(f"Expected {ARRAYS} as a zip of .npy members, got an unreadable file {where!r}: {err}") from None
    out, total = {}, 0
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        for key, (dtype, shape) in wanted.items():
            info = infos.get(f"{key}.npy")
            if info is None:
                raise ArtifactError(f"Array {key!r} listed in the manifest is missing from {where!r}.")
            total += info.file_size
            if total > cap:
                raise ArtifactError(f"Expected at most max_bytes={cap} bytes of arrays in {where!r}, got members "
                                    f"declaring {total}; pass max_bytes= to load a larger artifact.")
            try:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f"unsupported .npy version {version}")
                    got_shape, fortran, got_dtype = read_header(fh)
                    if got_dtype.hasobject or got_dtype.kind not in _ARRAY_KINDS:
                        raise ValueError(f"dtype {got_dtype} (artifacts hold numeric and string arrays only)")
                    if dtype is not None and (got_dtype != dtype or tuple(got_shape) != shape):
                        raise ValueError(f"dtype {got_dtype} shape {tuple(got_shape)}, the manifest declares "
                                         f"dtype {dtype} shape {shape}")
                    nbytes = int(np.prod(got_shape, dtype=np.float64)) * got_dtype.itemsize
                    if nbytes != info.file_size - fh.tell():
                        raise ValueError(f"a header for {nbytes} data bytes in a member holding "
                                         f"{info.file_size - fh.tell()}")
                    data = fh.read(nbytes)
                    if len(data) != nbytes:
                        raise ValueError(f"{len(data)} of {nbytes} data bytes")
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
                raise ArtifactError(f"Expected a valid .npy member {key!r} in {where!r}, got {err}.") from None
            a = np.frombuffer(data, dtype=got_dtype)
            out[key] = (a.reshape(got_shape[::-1]).T if fortran else a.reshape(got_shape)).copy()
    return out


def _retry_if_replaced(path, read):
    """``read()``, again when it failed because a concurrent save replaced the folder at ``path`` meanwhile
    (its inode changed): a reader then sees one whole artifact, the old or the new, never a mix."""
    for _ in range(5):
        before = _inode(path)
        try:
            return read()
        except (ArtifactError, OSError) as err:
            if before is None or _inode(path) == before:
                if isinstance(err, ArtifactError):
                    raise
                raise ArtifactError(f"Could not read the artifact at {str(path)!r}: {err}") from err
    raise ArtifactError(f"{str(path)!r} was replaced by concurrent saves 5 times while being read; retry later.")


def _inode(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def load_pipeline(path, *, max_bytes=None, key=None, with_manifest=False):
    """Load every component stored in an artifact folder: ``{"calibrator": ..., "conformal": ..., ...}``.

    The folder is untrusted input (see the module docstring). ``max_bytes`` (default
    :data:`MAX_LOAD_BYTES`, 1 GiB) caps what is decompressed. Raises :class:`ArtifactError` (a
    ``ValueError``) for a corrupted, tampered, oversized or unsupported artifact, naming the file and field,
    and ``FileNotFoundError`` for a missing folder. A folder replaced by a concurrent save while it is read
    is read again. With a signing key (``key=`` or the environment, :func:`signing_key`) a missing or wrong
    signature is a :class:`SignatureError`. ``with_manifest=True`` returns ``(components, manifest,
    pipeline_arrays)``: the verified manifest and the arrays of its ``pipeline`` block, read in the same pass.
    """
    path = Path(path)
    cap = _check_cap(max_bytes)
    key = signing_key(key)
    out = _retry_if_replaced(path, lambda: _load_pipeline(path, cap, key))
    return out if with_manifest else out[0]


def _load_pipeline(path, cap, key):
    manifest = _read_manifest(path, cap, key)
    mfile = str(path / MANIFEST)
    components = manifest.get("components")
    if not isinstance(components, dict) or "calibrator" not in components:
        raise ArtifactError(f"Expected a 'calibrator' component in {mfile!r}.")
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ArtifactError(f"Unknown components {unknown} in {mfile!r}; known: {list(COMPONENTS)}.")
    if "reference" in components and manifest.get("schema_version") in (1, 2):
        raise ArtifactError(f"Unexpected component 'reference' in the schema-{manifest.get('schema_version')} "
                            f"manifest {mfile!r}: reference statistics came with schema 3.")
    wanted, specs = {}, {}
    for name, entry in components.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("params", {}), dict) \
                or not isinstance(entry.get("state", {}), dict):
            raise ArtifactError(f"Expected components.{name} in {mfile!r} as a table with params and state tables, "
                                f"got {entry!r:.200}.")
        specs[name] = _array_specs(entry, f"components.{name}")
        wanted.update({f"{name}.{k}": spec for k, spec in specs[name].items()})
    block = manifest.get("pipeline")
    if block is not None:
        if not isinstance(block, dict):
            raise ArtifactError(f"Expected pipeline in {mfile!r} as a table, got {type(block).__name__}.")
        pspecs = _array_specs(block, "pipeline") if "arrays" in block else {}
        if any(dtype is None for dtype, _ in pspecs.values()):
            raise ArtifactError(f"Expected pipeline.arrays in {mfile!r} with dtype and shape of each array.")
        wanted.update({f"pipeline.{k}": spec for k, spec in pspecs.items()})
    stored = _read_members(path / ARRAYS, wanted, cap, manifest["files"][ARRAYS])
    n_classes = manifest.get("n_classes")
    class_names = manifest.get("class_names")
    if class_names is not None and (not isinstance(class_names, list) or len(class_names) != n_classes
                                    or not all(isinstance(c, str) for c in class_names)):
        raise ArtifactError(f"Expected class_names in {mfile!r} as {n_classes} strings, got {class_names!r:.200}.")
    out = {}
    for name in COMPONENTS:
        if name not in components:
            continue
        entry = components[name]
        module = _module(name)
        registry = _registry(name)
        kind = entry.get("kind")
        kind = getattr(module, "LEGACY_KINDS", {}).get(kind, kind) if isinstance(kind, str) else kind
        if not isinstance(kind, str) or kind not in registry:
            raise ArtifactError(f"Unsupported {name} kind {kind!r}; known kinds: {sorted(registry)} (in {mfile!r}).")
        arrays = {key: stored[f"{name}.{key}"] for key in specs[name]}
        try:
            obj = registry[kind].from_state(entry.get("params", {}), entry.get("state", {}), arrays)
        except (TypeError, KeyError, ValueError, IndexError, AttributeError, OverflowError) as err:
            raise ArtifactError(
                f"Could not rebuild {name} {kind!r} from {mfile!r} (components.{name}) and {ARRAYS}: {err}"
            ) from err
        if obj.n_classes_ != n_classes:
            raise ArtifactError(f"Expected components.{name} in {mfile!r} fitted on n_classes={n_classes!r} "
                                f"(the manifest's), got {obj.n_classes_}.")
        out[name] = obj
    parrays = {k[len("pipeline."):]: a for k, a in stored.items() if k.startswith("pipeline.")}
    return out, manifest, parrays


def load_artifact(path, *, max_bytes=None):
    """Load the calibrator stored in an artifact folder, rebuilt through ``calib.calibrators.REGISTRY``.

    Raises :class:`ArtifactError` (a ``ValueError``) for a corrupted, tampered or unsupported artifact
    and ``FileNotFoundError`` for a missing one. :func:`load_pipeline` returns the conformal predictor and
    policy as well.
    """
    return load_pipeline(path, max_bytes=max_bytes)["calibrator"]


def _version():
    from calib import __version__

    return __version__
