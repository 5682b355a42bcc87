"""Versioned, pickle-free artifacts: a folder that holds a fitted calibrator (and, later, the rest of
the pipeline) as JSON and ``.npz``.

Layout of ``artifact/``::

    manifest.json   format, schema_version, calib_version, created_utc, n_classes, class_names,
                    components {"calibrator": {"kind", "params", "state", "arrays": [...]},
                                "conformal": {...}, "policy": {...}},
                    data_fingerprint, metrics, files {name: sha256},
                    manifest_sha256 (digest of the rest of the manifest)
    arrays.npz      every component's arrays, keyed "<component>.<name>" (read with allow_pickle=False)
    config.yaml     optional provenance (never instantiated on load)

Writing goes to a temporary sibling folder that is renamed into place, so a reader never sees half an
artifact. Loading verifies the sha256 of every listed file, refuses unknown formats or schema versions,
and rebuilds each component through its registry (``calib.calibrators.REGISTRY``): no pickle, no
``hydra.utils.instantiate``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from calib._chunks import CACHE, row_slices
from calib._json import to_json

__all__ = ["save_artifact", "load_artifact", "load_pipeline", "read_manifest", "data_fingerprint", "ArtifactError",
           "FORMAT", "SCHEMA_VERSION"]

FORMAT = "calib.artifact"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"


class ArtifactError(ValueError):
    """An artifact folder is missing, corrupted, tampered with or of an unsupported version."""


#: Pipeline components in the order they are applied; each has a registry ``<module>.REGISTRY``.
COMPONENTS = {"calibrator": "calib.calibrators", "conformal": "calib.conformal", "policy": "calib.policy"}


def _module(component):
    import importlib
    import importlib.util

    module = COMPONENTS[component]
    if importlib.util.find_spec(module) is None:
        raise ArtifactError(f"This calib has no {component!r} components (module {module} is missing).")
    return importlib.import_module(module)


def _registry(component):
    return _module(component).REGISTRY


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
    entry = {"kind": kind, "params": obj.get_params(), "state": state, "arrays": sorted(arrays)}
    return entry, arrays


def save_artifact(calibrator, path, *, conformal=None, policy=None, metrics=None, data_fingerprint=None,
                  class_names=None, config_yaml=None, overwrite=False):
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

    Returns
    -------
    Path of the artifact folder.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"Artifact folder {str(path)!r} exists; pass overwrite=True to replace it.")
    components, flat = {}, {}
    for name, obj in (("calibrator", calibrator), ("conformal", conformal), ("policy", policy)):
        if obj is None:
            continue
        entry, arrays = _describe(name, obj)
        components[name] = entry
        for key, a in arrays.items():
            a = np.asarray(a)
            if a.dtype == object:
                raise TypeError(f"Refusing to store object array {name}.{key}: artifacts hold numeric arrays only.")
            flat[f"{name}.{key}"] = a
    if "calibrator" not in components:
        raise TypeError("Expected a fitted calibrator as the first argument, got None.")
    n_classes = int(components["calibrator"]["state"]["n_classes"])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != n_classes:
            raise ValueError(f"Expected {n_classes} class_names, got {len(class_names)}.")
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "calib_version": _version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_classes": n_classes,
        "class_names": class_names,
        "components": components,
        "data_fingerprint": data_fingerprint,
        "metrics": metrics,
    }
    _check_json(manifest, "artifact manifest (params, state, metrics)")
    manifest = to_json(manifest)  # strict JSON: one rule for non-finite numbers (calib._json)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write_npz(tmp / ARRAYS, flat)
        files = [ARRAYS]
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
            files.append("config.yaml")
        manifest["files"] = {name: _sha256_file(tmp / name) for name in files}
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_npz(path, arrays):
    # Deterministic bytes (fixed member timestamps), no pickle.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _manifest_digest(manifest):
    """sha256 of the manifest's canonical JSON without its own digest (detects edits of params/state)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def read_manifest(path):
    """Read and check ``manifest.json`` and the sha256 of every file it lists; return the manifest."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"Expected an artifact folder with {MANIFEST}, got {str(path)!r} without one.")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"Corrupted {MANIFEST} in {str(path)!r}: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"Expected format {FORMAT!r} in {str(mpath)!r}, got {manifest.get('format') if isinstance(manifest, dict) else manifest!r}."
        )
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"Unsupported artifact schema_version {version!r} in {str(mpath)!r}; this calib reads: [{SCHEMA_VERSION}]."
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
        fpath = (path / name).resolve()
        if root not in fpath.parents:
            raise ArtifactError(f"Refusing file {name!r} in {str(mpath)!r}: it points outside the artifact folder.")
        if not fpath.is_file():
            raise ArtifactError(f"Artifact file {name!r} listed in the manifest is missing from {str(path)!r}.")
        actual = _sha256_file(fpath)
        if actual != digest:
            raise ArtifactError(
                f"Checksum mismatch for {name!r} in {str(path)!r}: expected sha256 {digest}, got {actual} "
                "(the file was corrupted or modified)."
            )
    return manifest


def load_pipeline(path):
    """Load every component stored in an artifact folder: ``{"calibrator": ..., "conformal": ..., ...}``.

    Raises :class:`ArtifactError` (a ``ValueError``) for a missing, corrupted, tampered or unsupported
    artifact.
    """
    path = Path(path)
    manifest = read_manifest(path)
    with np.load(path / ARRAYS, allow_pickle=False) as npz:
        stored = {key: npz[key] for key in npz.files}
    components = manifest.get("components")
    if not isinstance(components, dict) or "calibrator" not in components:
        raise ArtifactError(f"Expected a 'calibrator' component in the manifest of {str(path)!r}.")
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ArtifactError(f"Unknown components {unknown} in {str(path)!r}; known: {list(COMPONENTS)}.")
    out = {}
    for name in COMPONENTS:
        if name not in components:
            continue
        entry = components[name]
        module = _module(name)
        registry = module.REGISTRY
        kind = entry.get("kind")
        kind = getattr(module, "LEGACY_KINDS", {}).get(kind, kind)  # kinds renamed since the artifact was written
        if kind not in registry:
            raise ArtifactError(f"Unsupported {name} kind {kind!r}; known kinds: {sorted(registry)}.")
        arrays = {}
        for key in entry.get("arrays", []):
            full = f"{name}.{key}"
            if full not in stored:
                raise ArtifactError(f"Array {full!r} listed in the manifest is missing from {ARRAYS}.")
            arrays[key] = stored[full]
        try:
            out[name] = registry[kind].from_state(entry.get("params", {}), entry.get("state", {}), arrays)
        except (TypeError, KeyError, ValueError) as err:
            raise ArtifactError(f"Could not rebuild {name} {kind!r} from {str(path)!r}: {err}") from err
    return out


def load_artifact(path):
    """Load the calibrator stored in an artifact folder, rebuilt through ``calib.calibrators.REGISTRY``.

    Raises :class:`ArtifactError` (a ``ValueError``) for a missing, corrupted, tampered or unsupported
    artifact. :func:`load_pipeline` returns the conformal predictor and policy as well.
    """
    return load_pipeline(path)["calibrator"]


def _version():
    from calib import __version__

    return __version__
