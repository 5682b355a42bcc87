"""Experiment configuration support: root-key schema, sweep-folder names, sweep progress.

Everything Hydra/OmegaConf-specific is imported inside the functions, so ``import calib.config`` stays as
light as ``import calib``; :func:`register_configs` is called by ``experiments/calibrate.py`` (and by tests
that compose configs) before Hydra composes anything.

* :class:`ExperimentConfig` is the structured-config schema (Hydra's "structured config schema" pattern)
  for the root keys: a misspelled root key or a wrong type in any YAML file or override fails at compose
  time, before data are loaded. The component groups (``data``, ``calibrator``, ``conformal``, ``policy``)
  are free-form here; their schema is the constructor signature of the ``_target_`` (keyword-only,
  validated at instantiate).
* ``${calib.sweep_subdir:<override_dirname>,<seed>}`` names a sweep job's folder
  ``<overrides>/seed=<seed>``: '/' and other unsafe characters in values (``data.path=/x/y.npz``) are
  escaped, an empty override string becomes ``default`` (never an absolute ``/seed=0``), and very long
  names are shortened with a hash, so two jobs with different overrides or seeds never share a folder.
* :class:`SweepProgress` is a Hydra callback that logs ``[job i/N]`` lines as sweep jobs start and end.
"""

import dataclasses
import hashlib
import logging
import typing
import urllib.parse

__all__ = [
    "ExperimentConfig", "EvalConfig", "SplitConfig", "GROUPS", "register_configs", "register_resolvers",
    "sweep_subdir", "check_overrides", "validate_root", "root_keys", "SweepProgress",
]

log = logging.getLogger(__name__)

#: Config groups of ``conf/`` selected at the root (``experiment`` presets are ``# @package _global_``).
GROUPS = ("data", "calibrator", "conformal", "policy", "eval", "experiment")

# Longest folder name we produce from overrides (most file systems allow 255 bytes per component).
_MAX_NAME = 150
# Characters kept as they are in folder names; everything else is %-escaped (so '/' -> '%2F').
_SAFE = "=,+-_.:@[]{}()"


@dataclasses.dataclass
class SplitConfig:
    """How calibration/test parts are chosen (see ``LogitsData.split_cal_test``)."""

    cal_fraction: float = 0.5
    resplit: bool = False


@dataclasses.dataclass
class EvalConfig:
    """Evaluation settings on the test part.

    ``n_bins``: bins of the binned calibration metrics; ``n_bootstrap``: bootstrap resamples of the
    policy's confidence intervals (conditional on the calibration split); ``bootstrap_seed``: seed of every
    resampling; ``calibration_bootstrap``: resamples of the calibration metrics' intervals
    (``calibration_ci``; 0 = none); ``procedure_resamples``: resamples of the procedure-level interval that
    refits everything (``procedure_ci``; 0 = none, the default: ~80 ms per resample on the embedded set with
    a policy and a conformal predictor). See docs/metrics.md. (Conformal miscoverage levels live in the
    conformal group: ``conformal.alpha=[0.05,0.1]``.)
    """

    n_bins: int = 15
    n_bootstrap: int = 2000
    bootstrap_seed: int = 0
    calibration_bootstrap: int = 500
    procedure_resamples: int = 0


@dataclasses.dataclass
class MonitorConfig:
    """The shift monitor run after the fit (:func:`calib.evaluation.monitor.monitor_batch`; docs/shift.md).

    ``target``: a logits file of a serving batch (any format ``calib.load_logits`` reads; labels unused), or
    ``test`` for this run's own test part (its labels unused), or null (default: no monitor). The report goes
    to ``<run folder>/monitor/`` (monitor.json and figures); ``fail_on_alarm``: exit 1 when an alarm fires.
    The other keys are those of ``calib monitor``.
    """

    target: typing.Optional[str] = None
    alpha: float = 0.05
    fdr: float = 0.1
    novelty_score: str = "energy"
    label_shift: str = "em"
    n_bootstrap: int = 200
    accuracy_tolerance: float = 0.05
    seed: int = 0
    fail_on_alarm: bool = False


@dataclasses.dataclass
class ExperimentConfig:
    """Schema of the root config of ``experiments/calibrate.py`` (registered as ``config_schema``)."""

    data: typing.Any = "???"
    calibrator: typing.Any = "???"
    conformal: typing.Any = None
    policy: typing.Any = None
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    seed: int = 0


def root_keys():
    """Valid root keys: the schema fields plus ``hydra`` and the ``experiment`` group."""
    return sorted({f.name for f in dataclasses.fields(ExperimentConfig)} | {"experiment", "hydra"})


_NESTED = {"eval": EvalConfig, "split": SplitConfig, "monitor": MonitorConfig}


def check_overrides(overrides):
    """Raise ``ValueError`` naming the valid keys when a command-line override uses an unknown key.

    Checks the root key of every ``key=value`` override (``hydra.*`` and ``hydra/...`` are Hydra's own)
    and the second level of the schema-typed ``eval`` and ``split`` nodes. Keys inside component groups
    (``calibrator.x``) are left to Hydra, whose message names the full key.

    >>> check_overrides(["seed=1", "calibrator=temperature", "eval.n_bins=10", "hydra/launcher=joblib"])
    >>> check_overrides(["sede=1"])
    Traceback (most recent call last):
    ...
    ValueError: Unknown config key 'sede' in override 'sede=1' (did you mean 'seed'?); valid root keys: ['calibrator', 'conformal', 'data', 'eval', 'experiment', 'hydra', 'monitor', 'policy', 'seed', 'split'].
    """
    import difflib

    valid = root_keys()
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra flags (--multirun, -cn, ...) and their values
        key = arg.split("=", 1)[0].lstrip("+~")
        parts = key.replace("/", ".").split(".")
        root = parts[0]
        if root not in valid:
            close = difflib.get_close_matches(root, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Unknown config key {root!r} in override {arg!r}{hint}; valid root keys: {valid}.")
        if root in _NESTED and len(parts) > 1 and "/" not in key:
            fields = sorted(f.name for f in dataclasses.fields(_NESTED[root]))
            if parts[1] not in fields:
                close = difflib.get_close_matches(parts[1], fields, n=1)
                hint = f" (did you mean {root}.{close[0]!r}?)" if close else ""
                raise ValueError(
                    f"Unknown config key {key!r} in override {arg!r}{hint}; valid keys of {root!r}: {fields}."
                )


def validate_root(cfg):
    """Raise ``ValueError`` when a composed config has a root key the schema does not know.

    Hydra's ``+key=value`` can force a new key past the schema; this catches it before any work.
    """
    valid = set(root_keys())
    unknown = sorted(str(k) for k in cfg.keys() if k not in valid)
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown}; valid root keys: {root_keys()}.")
    # Settings used only by some stages are checked here, so a bad one fails even where it goes unused.
    from calib._validation import check_fraction, check_positive_int

    if cfg.get("eval") is not None:
        check_positive_int(cfg.eval.n_bins, "eval.n_bins", minimum=1)
        check_positive_int(cfg.eval.n_bootstrap, "eval.n_bootstrap", minimum=0)
        check_positive_int(cfg.eval.bootstrap_seed, "eval.bootstrap_seed", minimum=0)
        check_positive_int(cfg.eval.calibration_bootstrap, "eval.calibration_bootstrap", minimum=0)
        check_positive_int(cfg.eval.procedure_resamples, "eval.procedure_resamples", minimum=0)
    if cfg.get("split") is not None:
        check_fraction(cfg.split.cal_fraction, "split.cal_fraction")
    if cfg.get("monitor") is not None and cfg.monitor.get("target") is not None:
        from calib._validation import check_choice

        check_fraction(cfg.monitor.alpha, "monitor.alpha")
        check_fraction(cfg.monitor.fdr, "monitor.fdr")
        check_choice(cfg.monitor.novelty_score, "monitor.novelty_score", ("energy", "max_logit"))
        check_choice(cfg.monitor.label_shift, "monitor.label_shift", ("em", "bbse"))
        check_positive_int(cfg.monitor.n_bootstrap, "monitor.n_bootstrap", minimum=0)
        check_positive_int(cfg.monitor.seed, "monitor.seed", minimum=0)


def sweep_subdir(override_dirname, seed):
    """Folder of one sweep job, relative to the sweep folder: ``<escaped overrides>/seed=<seed>``.

    >>> sweep_subdir("calibrator=temperature,data.path=/tmp/a.npz", 3)
    'calibrator=temperature,data.path=%2Ftmp%2Fa.npz/seed=3'
    >>> sweep_subdir("", 0)
    'default/seed=0'
    """
    name = urllib.parse.quote(str(override_dirname or ""), safe=_SAFE)
    if not name:
        name = "default"
    elif len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:_MAX_NAME - 13]}~{digest}"
    if name in (".", ".."):  # cannot come from key=value overrides, but never climb out of the sweep folder
        name = f"_{name}"
    seed = urllib.parse.quote(str(seed), safe=_SAFE)
    return f"{name}/seed={seed}"


def register_resolvers():
    """Register the ``calib.sweep_subdir`` OmegaConf resolver (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("calib.sweep_subdir"):
        OmegaConf.register_new_resolver("calib.sweep_subdir", sweep_subdir)


def register_configs():
    """Store :class:`ExperimentConfig` as ``config_schema`` in Hydra's ConfigStore and register resolvers."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=ExperimentConfig)
    register_resolvers()


def _count_jobs(config):
    """Number of jobs of a BasicSweeper multirun (sweeper params + command-line overrides), or None."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(args)
    batches = BasicSweeper.split_arguments(parsed, None)
    return sum(len(b) for b in batches)


class SweepProgress:
    """Hydra callback: ``[job i/N] start ...`` / ``[job i/N] done in t s -> folder`` log lines.

    Enable with ``hydra.callbacks.progress._target_=calib.config.SweepProgress`` (``conf/config.yaml``
    does). N is known for Hydra's basic sweeper; other sweepers print ``?``. Unpickling this object in a
    launcher worker (joblib, submitit) registers calib's resolvers there, which the sweep folder name
    needs before the job starts.
    """

    def __init__(self):
        self.total = None
        self._start = {}
        register_resolvers()

    def __setstate__(self, state):
        self.__dict__.update(state)
        register_resolvers()

    def on_multirun_start(self, config, **kwargs):
        try:
            self.total = _count_jobs(config)
        except Exception as err:  # a sweeper with its own syntax: progress without a total
            log.debug("Could not count sweep jobs: %s", err)
            self.total = None
        if self.total is not None:
            log.info("Sweep of %d jobs -> %s", self.total, config.hydra.sweep.dir)

    def _tag(self, config):
        from omegaconf import OmegaConf

        num = OmegaConf.select(config, "hydra.job.num")
        if num is None:
            return None
        return f"[job {int(num) + 1}/{self.total if self.total is not None else '?'}]"

    def on_job_start(self, config, **kwargs):
        import time

        tag = self._tag(config)
        if tag is not None:
            self._start[tag] = time.perf_counter()
            log.info("%s start: %s", tag, " ".join(config.hydra.overrides.task) or "(defaults)")

    def on_job_end(self, config, job_return=None, **kwargs):
        import time

        tag = self._tag(config)
        if tag is None:
            return
        elapsed = time.perf_counter() - self._start.pop(tag, time.perf_counter())
        status = getattr(getattr(job_return, "status", None), "name", "?")
        log.info("%s %s in %.1f s -> %s", tag, "done" if status == "COMPLETED" else status.lower(), elapsed,
                 config.hydra.runtime.output_dir)

    def on_run_start(self, config, **kwargs):
        pass

    def on_run_end(self, config, **kwargs):
        pass

    def on_multirun_end(self, config, **kwargs):
        pass
