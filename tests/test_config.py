"""Config tests: every option of every conf/ group composes and instantiates; typos fail with valid choices.

Options are globbed from conf/<group>/*.yaml at collection time, so files added by anyone are covered.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from pathlib import Path

import pytest

from calib.config import (EvalConfig, ExperimentConfig, check_overrides, register_configs, root_keys,
                          sweep_subdir, validate_root)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("CALIB_SHARED_DATA", REPO.parent / "shared" / "data"))
COMPONENT_GROUPS = ("calibrator", "conformal", "policy")
GROUPS = ("data", *COMPONENT_GROUPS, "eval", "experiment")


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [(group, option) for group in GROUPS for option in options(group)]


@pytest.fixture(scope="module")
def compose():
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda overrides=(), **kw: _compose("config", overrides=list(overrides), **kw)


def _registry(group):
    import importlib

    module = {"calibrator": "calib.calibrators", "conformal": "calib.conformal", "policy": "calib.policy"}[group]
    try:
        return importlib.import_module(module).REGISTRY
    except (ImportError, AttributeError):
        return None


def test_groups_are_not_empty():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"
    assert {"builtin", "npz", "synthetic", "kull_densenet40", "kull_convnet"} <= set(options("data"))
    assert {"calibrator_zoo", "kull2019", "model_comparison"} <= set(options("experiment"))


def test_every_shared_dataset_has_a_data_option():
    # One data option per logits file in ../shared/data.
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (set CALIB_SHARED_DATA)")
    pointed = set()
    for path in (CONF / "data").glob("*.yaml"):
        match = re.search(r"shared/data}/(\S+\.npz)", path.read_text())
        if match:
            pointed.add(match.group(1))
    files = {p.relative_to(SHARED_DATA).as_posix() for p in SHARED_DATA.glob("*/*.npz")}
    assert files <= pointed, f"no conf/data option for {sorted(files - pointed)}"


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_instantiates(compose, group, option):
    from omegaconf import OmegaConf

    from calib._hydra import instantiate

    if group == "experiment":
        cfg = compose([f"experiment={option}"], return_hydra_config=True)
        assert "hydra" in cfg and cfg.hydra.sweeper.params, "a preset defines a sweep"
        return
    cfg = compose([f"{group}={option}"])
    node = cfg[group]
    if group == "eval":
        assert cfg.eval.n_bins >= 1 and cfg.eval.n_bootstrap >= 1
        return
    if not node:
        assert group in COMPONENT_GROUPS and option == "none", f"{group}={option} is empty"
        return
    if group == "data":
        if OmegaConf.is_missing(node, "path"):
            pytest.skip(f"data={option} needs data.path=... (composes; nothing to load)")
        if "path" in node and not Path(node.path).is_file():
            pytest.skip(f"data={option}: {node.path} is absent (tests-only data in ../shared)")
        data = instantiate(node)
        assert data.n_classes >= 2 and data.n_samples > data.n_classes
        if data.split is not None:
            assert set(data.split.tolist()) == {0, 1}
        return
    obj = instantiate(node)
    assert isinstance(obj.kind, str)
    json.dumps(obj.get_params())  # constructor args arrive as plain Python (artifacts are JSON)
    registry = _registry(group)
    if registry is not None:
        assert obj.kind in registry and isinstance(obj, registry[obj.kind])


@pytest.mark.parametrize("group", ["data", *COMPONENT_GROUPS, "eval", "experiment"])
def test_unknown_option_lists_valid_choices(compose, group):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose([f"{group}=nonexistent"])
    message = str(err.value)
    assert f"Available options in '{group}'" in message
    for option in options(group):
        assert option in message


def test_unknown_or_mistyped_root_key_fails_before_any_work(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="sede"):
        compose(["sede=1"])
    with pytest.raises(ConfigCompositionException):
        compose(["seed=abc"])
    with pytest.raises(ConfigCompositionException):
        compose(["eval.n_bins=many"])
    with pytest.raises(ValueError, match=r"did you mean 'seed'\?\); valid root keys: \['calibrator'"):
        check_overrides(["calibrator=temperature", "sede=1"])
    with pytest.raises(ValueError, match=r"valid keys of 'eval': \['bootstrap_seed', 'calibration_bootstrap', 'n_bins', 'n_bootstrap'"):
        check_overrides(["eval.n_bin=10"])
    check_overrides(["seed=3", "+calibrator.x=1", "hydra/launcher=joblib", "hydra.sweep.dir=x", "-m"])
    # `+key=` forces a key past Hydra's struct check; run() validates the root before loading data.
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['sede'\]; valid root keys"):
        validate_root(compose(["+sede=1"]))
    validate_root(compose())


def test_schema_rejects_typos_and_wrong_types_in_yaml():
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    schema = OmegaConf.structured(ExperimentConfig)
    with pytest.raises(ConfigKeyError, match="sede"):
        OmegaConf.merge(schema, {"sede": 1})
    with pytest.raises(ValidationError, match="seed"):
        OmegaConf.merge(schema, {"seed": "zero"})
    with pytest.raises(ValidationError):
        OmegaConf.merge(schema, {"eval": {"n_bins": "a"}})
    with pytest.raises(ConfigKeyError):
        OmegaConf.merge(schema, {"split": {"fraction": 0.3}})
    assert root_keys() == sorted({f.name for f in dataclasses.fields(ExperimentConfig)} | {"experiment", "hydra"})
    assert {f.name for f in dataclasses.fields(EvalConfig)} == set(OmegaConf.load(CONF / "eval" / "default.yaml"))


def test_root_config_defaults(compose):
    cfg = compose()
    assert cfg.seed == 0 and cfg.split.cal_fraction == 0.5 and cfg.split.resplit is False
    assert cfg.calibrator._target_.startswith("calib.")


@pytest.mark.parametrize("name", options("experiment"))
def test_preset_sweeps_name_existing_options(compose, name):
    """Every group option a preset sweeps over composes with the preset (missing ones are reported)."""
    cfg = compose([f"experiment={name}"], return_hydra_config=True)
    missing = []
    for key, value in cfg.hydra.sweeper.params.items():
        if key not in GROUPS or str(value).startswith("glob("):
            continue
        for option in str(value).split(","):
            if option not in options(key):
                missing.append(f"{key}={option}")
                continue
            composed = compose([f"experiment={name}", f"{key}={option}"])
            assert composed[key] is not None
    if missing:
        pytest.skip(f"experiment={name} sweeps options that do not exist (yet): {missing}")


def test_slurm_launcher_preset(compose):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=cpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "cpu" and launcher.timeout_min > 0 and launcher.cpus_per_task >= 1
    assert launcher.array_parallelism >= 1 and launcher.gpus_per_node == 0


@pytest.mark.parametrize("dirname", ["", "calibrator=temperature", "data.path=/abs/x.npz,calibrator=identity",
                                     "data.path=../../etc", "data.path=a/../../..", "x=" + "y" * 400])
def test_sweep_subdir_is_relative_and_distinct_per_seed(dirname):
    names = {sweep_subdir(dirname, seed) for seed in (0, 1, 10)}
    assert len(names) == 3
    for name in names:
        parts = name.split("/")
        assert len(parts) == 2 and parts[1].startswith("seed=")
        assert not posixpath.isabs(name) and ".." not in parts and "." not in parts
        assert len(parts[0].encode()) <= 255
    assert sweep_subdir("", 0) == "default/seed=0"


def test_sweep_subdir_keeps_distinct_overrides_distinct():
    long_a, long_b = "x=" + "y" * 400, "x=" + "y" * 399 + "z"
    pairs = [("data.path=a/b", "data.path=a_b"), ("data.path=a/b", "data.path=a%2Fb"), (long_a, long_b)]
    for a, b in pairs:
        assert sweep_subdir(a, 0) != sweep_subdir(b, 0)


def test_published_values_match_the_shared_readmes():
    """conf/published/kull2019.yaml is a transcription: every value appears in its README's row."""
    from omegaconf import OmegaConf

    published = OmegaConf.to_container(OmegaConf.load(CONF / "published" / "kull2019.yaml"))
    assert set(published["results"]) <= set(options("data"))
    for dataset, table in published["results"].items():
        rel = re.search(r"shared/data}/([^/]+)/", (CONF / "data" / f"{dataset}.yaml").read_text()).group(1)
        readme = SHARED_DATA / rel / "README.md"
        if not readme.is_file():
            pytest.skip(f"{readme} is absent")
        lines = readme.read_text().splitlines()
        for method, values in table.items():
            row = next(line for line in lines if line.startswith(f"| {method} |"))
            for metric, value in values.items():
                assert str(value) in row, f"{dataset} {method} {metric}={value} not in {row!r}"


@pytest.mark.parametrize("option", [o for o in options("policy") if o != "none"])
def test_every_policy_composes_the_shared_cost_model(compose, option):
    import yaml
    from omegaconf import OmegaConf

    default = yaml.safe_load((CONF / "policy" / "costs" / "default.yaml").read_text())
    assert OmegaConf.to_container(compose([f"policy={option}"]).policy.costs) == default
    changed = compose([f"policy={option}", "policy.costs.escalation=0.5"]).policy.costs
    assert OmegaConf.to_container(changed) == {**default, "escalation": 0.5}
    assert "costs" not in options("policy")  # a subgroup, never a policy of its own (policy=glob(*) skips it)
