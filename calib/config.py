"""Experiment configuration support: root-key schema, sweep-folder names, sweep progress.

Everything Hydra/OmegaConf-specific is imported inside the functions, so ``import calib.config`` stays as
light as ``import calib``; :func:`register_configs` is called by ``experiments/calibrate.py`` (and by tests
that compose configs) before Hydra composes anything.

* :class:`ExperimentConfig` is the structured-config schema (Hydra's "structured config schema" pattern)
  for the root keys: a misspelled root key or a wrong type in any YAML file or override fails at compose
  time, before data are loaded. The component groups (``data``, ``calibrator``, ``conformal``, ``policy``)
  are free-form here; their keys are those of the chosen option's YAML and of its ``_target_``'s constructor
  (keyword-only, validated at instantiate), which :func:`check_component_overrides` checks on the command
  line before Hydra composes (a typo fails with the closest valid key).
* ``calibrate.py --help`` (``conf/hydra/help/calib.yaml``) lists the groups through :func:`help_groups`.
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
    "sweep_subdir", "check_overrides", "check_component_overrides", "help_groups", "validate_root", "root_keys", "SweepProgress",
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


def check_overrides(overrides, *, config_dir=None, config_name="config"):
    """Check the keys of command-line overrides; raise ``ValueError`` naming the valid keys on a typo.

    Checks the root key of every ``key=value`` override (``hydra.*`` and ``hydra/...`` are Hydra's own)
    and the second level of the schema-typed ``eval``, ``split`` and ``monitor`` nodes. With ``config_dir``
    (the ``conf/`` folder) it also checks keys inside the component groups (``data``, ``calibrator``,
    ``conformal``, ``policy``; see :func:`check_component_overrides`) and returns the overrides with the
    ``+`` prefix fixed where Hydra would refuse it; without it, returns the overrides unchanged.

    >>> check_overrides(["seed=1", "calibrator=temperature", "eval.n_bins=10", "hydra/launcher=joblib"])
    ['seed=1', 'calibrator=temperature', 'eval.n_bins=10', 'hydra/launcher=joblib']
    >>> check_overrides(["sede=1"])
    Traceback (most recent call last):
    ...
    ValueError: Unknown config key 'sede' in override 'sede=1' (did you mean 'seed'?); valid root keys: ['calibrator', 'conformal', 'data', 'eval', 'experiment', 'hydra', 'monitor', 'policy', 'seed', 'split'].
    """
    import difflib

    overrides = list(overrides)
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
    if config_dir is None:
        return overrides
    return check_component_overrides(overrides, config_dir=config_dir, config_name=config_name)


#: Groups whose nodes are components built from ``_target_`` (their keys: the YAML's and the constructor's).
COMPONENT_GROUPS = ("data", "calibrator", "conformal", "policy")
# Group choices that decide which YAML a component node comes from.
_CHOICE_GROUPS = COMPONENT_GROUPS + ("experiment",)
# Hydra flags followed by a value, and those that choose another config (then no component check).
_FLAGS_WITH_VALUE = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--info", "-i",
                     "--experimental-rerun")
_OTHER_CONFIG = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")


def _is_special(key):
    return isinstance(key, str) and key.startswith("_") and key.endswith("_")


def _signature_keys(target):
    """Keyword parameters of a ``calib.*`` ``_target_``; None when it takes ``**kwargs`` or cannot be found."""
    import importlib
    import inspect

    if not isinstance(target, str) or not target.startswith("calib."):
        return None
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        params = inspect.signature(obj).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _node_keys(node):
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return None
    return {str(k) for k in node.keys() if not _is_special(k)}


def _option_choices(override, group, config_dir):
    """The options a group-choice override selects (a sweep gives several)."""
    if not override.is_sweep_override():
        return [str(override.value())]
    from hydra.core.override_parser.types import ValueType

    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        import pathlib

        names = sorted(p.stem for p in (pathlib.Path(config_dir) / group).glob("*.yaml"))
        return list(override.value().filter(names))
    return [str(v) for v in override.sweep_string_iterator()]


def _yaml_option_keys(config_dir, group, option):
    """Top-level keys of ``conf/<group>/<option>.yaml`` (no composition), or None when it cannot be read simply."""
    import pathlib

    import yaml

    path = pathlib.Path(config_dir) / group / f"{option}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k) for k in data if k != "defaults"}


def _default_choice(config_dir, config_name, group):
    """The option of ``group`` in the root config's defaults list, or None."""
    import pathlib

    import yaml

    try:
        data = yaml.safe_load((pathlib.Path(config_dir) / f"{config_name}.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    for entry in (data or {}).get("defaults", []) if isinstance(data, dict) else []:
        if isinstance(entry, dict) and group in entry:
            return entry[group]
    return None


def check_component_overrides(overrides, *, config_dir, config_name="config"):
    """Check overrides of keys inside component groups against the keys each group's node can take.

    A key of a component node (``calibrator.log_t_bounds``, ``conformal.alpha``, ``data.labels_path``) is valid
    when the node's YAML (``conf/<group>/<option>.yaml``, the option chosen on the command line, by an
    ``experiment`` preset or by the defaults, after composition) has it, or when its ``_target_``'s constructor
    takes it as a keyword. An unknown key fails here, before Hydra composes or anything is written, with one
    line naming the key, the closest valid key and the valid keys of the chosen option, instead of Hydra's
    advice to add ``+`` that then fails in the constructor. A sweep over a group (``calibrator=a,b``,
    ``glob(*)``, a preset's ``hydra.sweeper.params``) needs a key valid for every option it runs (else the
    jobs of the others would fail); the message names those without it.

    Returns the overrides with the prefix fixed where Hydra would refuse a valid key: ``+key`` for a key the
    YAML already has, and ``key`` for a constructor keyword the YAML lacks, both become ``++key`` (add or set).
    """
    import difflib

    overrides = list(overrides)
    if any(a in _OTHER_CONFIG or a.split("=", 1)[0] in _OTHER_CONFIG for a in overrides):
        return overrides  # another config: its groups are not ours to check
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    positions, skip = [], False
    for i, arg in enumerate(overrides):
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
            continue
        if "=" in arg or arg.startswith("~"):
            positions.append(i)
    parser = OverridesParser.create()
    parsed = {i: parser.parse_override(overrides[i]) for i in positions}
    nested = {i: o for i, o in parsed.items()
              if "." in o.key_or_group and "/" not in o.key_or_group
              and o.key_or_group.split(".", 1)[0] in COMPONENT_GROUPS and o.package is None}
    if not nested:
        return overrides
    choices = {}  # group -> options chosen on the command line
    for o in parsed.values():
        if o.key_or_group in _CHOICE_GROUPS and o.type is not OverrideType.DEL:
            choices[o.key_or_group] = _option_choices(o, o.key_or_group, config_dir)
    multirun = any(a in ("-m", "--multirun") for a in overrides)

    # Fast path: every key is in the YAML of its one option (explicit or the default): nothing to compose. (Without
    # an experiment preset no sweeper params choose options: conf/config.yaml sets none.)
    if "experiment" not in choices:
        fixed = list(overrides)
        for i, o in nested.items():
            group, key = o.key_or_group.split(".", 1)
            opts = choices.get(group) or [_default_choice(config_dir, config_name, group)]
            keys = _yaml_option_keys(config_dir, group, opts[0]) if len(opts) == 1 and opts[0] else None
            if keys is None or key not in keys:  # also deeper keys (policy.costs.x): compose
                break
            if o.type is OverrideType.ADD:
                fixed[i] = "+" + overrides[i]  # +key of a key the YAML has: Hydra would refuse to add it
        else:
            return fixed

    # Compose the configurations this command can produce (each group sweep varied alone) without the nested
    # overrides, and read each component node's keys.
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    register_configs()
    # Hydra's config loader itself, not hydra.compose: no global state, so this also works inside an
    # initialized Hydra (a test's compose fixture, a running app).
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir)))
    base = {g: opts[0] for g, opts in choices.items() if opts}
    deleted = [overrides[i] for i, o in parsed.items() if o.key_or_group in _CHOICE_GROUPS
               and o.type is OverrideType.DEL]
    variants = []

    def run(sel):  # one composition: group choices only (the nested overrides are what we check)
        args = [f"{g}={opt}" for g, opt in sel.items()] + deleted
        return sel, loader.load_configuration(config_name, args, run_mode=RunMode.RUN)

    first = run(base)
    variants.append(first)
    sweeps = {g: opts[1:] for g, opts in choices.items() if len(opts) > 1}
    if multirun:  # a preset's sweeper params choose groups too, unless the command line does
        params = OmegaConf.select(first[1], "hydra.sweeper.params") or {}
        for g, value in params.items():
            if g in COMPONENT_GROUPS and g not in choices:
                opts = _option_choices(parser.parse_override(f"{g}={value}"), g, config_dir)
                sweeps[g] = opts
    for g, opts in sweeps.items():
        for opt in opts:
            variants.append(run({**base, g: opt}))

    fixed = list(overrides)
    for i, o in nested.items():
        group, key = o.key_or_group.split(".", 1)
        path = key.split(".")
        where = ".".join([group] + path[:-1])
        options = {}  # "group=option" -> (valid keys or None for any key, keys of its YAML)
        for _, cfg in variants:
            label = f"{group}={OmegaConf.select(cfg, f'hydra.runtime.choices.{group}')}"
            node = cfg.get(group)
            for part in path[:-1]:  # deeper keys (policy.costs.human_accuracy): walk the composed node
                node = node.get(part) if _node_keys(node) is not None and part in _node_keys(node) else None
            keys = _node_keys(node)
            if keys is None:  # a value, not a node, or a path we cannot walk: Hydra decides
                options[label] = (None if node is not None or len(path) > 1 else set(), set())
                continue
            target = node.get("_target_")
            sig = set() if target is None or len(path) > 1 else _signature_keys(target)
            options[label] = (None if sig is None else keys | sig, keys)  # None: **kwargs, any key
        bad = [label for label, (valid, _) in options.items() if valid is not None and path[-1] not in valid]
        if bad:
            good = [label for label in options if label not in bad]
            if good:  # a sweep over options: the jobs of the other options would fail
                raise ValueError(
                    f"Unknown key '{o.key_or_group}' in override {overrides[i]!r} for {', '.join(bad)} (a key of "
                    f"{', '.join(good)} only); valid keys of {bad[0]}: {sorted(options[bad[0]][0])}."
                )
            listed = sorted(set().union(*(options[label][0] for label in bad)))
            close = difflib.get_close_matches(path[-1], listed, n=1)
            hint = f" (did you mean '{where}.{close[0]}'?)" if close else ""
            which = ", ".join(bad) if len(path) == 1 else where
            raise ValueError(
                f"Unknown key '{o.key_or_group}' in override {overrides[i]!r}{hint}; valid keys of {which}: {listed}"
                + (f" (choose an option: {group}=<name>)." if not listed else ".")
            )
        in_yaml = any(path[-1] in keys for _, keys in options.values())
        in_all = all(path[-1] in keys for _, keys in options.values())
        if o.type is OverrideType.ADD and in_yaml or o.type is OverrideType.CHANGE and not in_all:
            fixed[i] = "++" + overrides[i].lstrip("+")  # add or set: valid in every variant
    return fixed


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


#: Groups ``experiments/calibrate.py --help`` lists (``conf/published`` and ``compare.yaml`` are not its options).
HELP_GROUPS = ("data", "calibrator", "conformal", "policy", "policy/costs", "eval", "experiment")


def help_groups(*, _root_=None, config_dir=None):
    """The ``== Configuration groups ==`` text of ``calibrate.py --help``: each group a root config can take and
    its options (the YAML files of ``conf/<group>/``), one group per line.

    ``config_dir`` defaults to the primary config source of the Hydra config being rendered (``_root_``).
    """
    import pathlib
    import textwrap

    if config_dir is None:
        sources = _root_.hydra.runtime.config_sources if _root_ is not None else []
        config_dir = next((src.path for src in sources if src.provider == "main" and src.schema == "file"), None)
    if config_dir is None:
        return "(the config folder is unknown: see docs/experiments.md)"
    lines = []
    for group in HELP_GROUPS:
        folder = pathlib.Path(config_dir) / group
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            lines.append(textwrap.fill(f"{group}: {', '.join(options)}", width=110, subsequent_indent="    "))
    return "\n".join(lines)


def register_resolvers():
    """Register the ``calib.sweep_subdir`` and ``calib.help_groups`` OmegaConf resolvers (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("calib.sweep_subdir"):
        OmegaConf.register_new_resolver("calib.sweep_subdir", sweep_subdir)
    if not OmegaConf.has_resolver("calib.help_groups"):
        OmegaConf.register_new_resolver("calib.help_groups", lambda _root_: help_groups(_root_=_root_))


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
