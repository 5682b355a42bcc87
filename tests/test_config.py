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
    # Sets embedded in calib (calib/data, calib.datasets.BUILTIN) are named by their embedded option instead.
    embedded = {f"c10lt_sctl/{m}.npz" for m in ("densenet40", "resnet110", "resnet110_sd", "wrn28")}
    embedded |= {f"cifar_netcal/{m}.npz" for m in ("cifar10_wrn16_4", "cifar100_wrn16_4", "cifar100_densenet_bc100")}
    embedded.add("c10_vgg16_kumar/logits.npz")
    files = {p.relative_to(SHARED_DATA).as_posix() for p in SHARED_DATA.glob("*/*.npz")}
    assert files <= pointed | embedded, f"no conf/data option for {sorted(files - pointed - embedded)}"


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
    # data=builtin (the default) pools the embedded set's shifted parts and splits them again (issue 16)
    assert cfg.seed == 0 and cfg.split.cal_fraction == 0.5 and cfg.split.resplit is True
    assert compose(["data=builtin_shifted"]).split.resplit is False  # the file's own (shifted) split
    assert compose(["data=synthetic"]).split.resplit is False  # the schema's default for other data
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


# --- keys inside component groups (issue 16): did-you-mean, no '+' for valid keys, documented keys exist ------

NESTED_TYPOS = [
    (["calibrator.log_t_bound=[-3,3]"], "calibrator.log_t_bound", "calibrator.log_t_bounds", "calibrator=temperature"),
    (["conformal=aps", "conformal.alhpa=0.1"], "conformal.alhpa", "conformal.alpha", "conformal=aps"),
    (["policy=risk_control", "policy.target_rsk=0.05"], "policy.target_rsk", "policy.target_risk",
     "policy=risk_control"),
    (["data=npz", "data.path=x.npz", "data.label_path=y.npy"], "data.label_path", "data.labels_path", "data=npz"),
    (["data=npz", "data.path=x.npz", "data.logit_key=s"], "data.logit_key", "data.logits_key", "data=npz"),
]


@pytest.mark.parametrize("args,key,near,choice", NESTED_TYPOS, ids=[c[1] for c in NESTED_TYPOS])
def test_nested_key_typo_names_the_key_the_closest_and_the_valid_keys(args, key, near, choice):
    with pytest.raises(ValueError) as info:
        check_overrides(args, config_dir=CONF)
    message = str(info.value)
    assert message.startswith(f"Unknown key '{key}' in override '{args[-1]}' (did you mean '{near}'?); "
                              f"valid keys of {choice}: ["), message
    assert "\n" not in message
    group, option = choice.split("=")
    import yaml

    yaml_keys = {k for k in yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) if not k.startswith("_")}
    listed = set(re.search(r": (\[.*\])\.$", message).group(1).strip("[]").replace("'", "").split(", "))
    assert yaml_keys - {"defaults"} <= listed  # every key of the option's YAML is offered


def test_nested_unknown_key_is_refused_even_with_plus():
    with pytest.raises(ValueError, match=re.escape("Unknown key 'calibrator.foo' in override '+calibrator.foo=1'; "
                                                   "valid keys of calibrator=temperature: ['log_t_bounds'].")):
        check_overrides(["+calibrator.foo=1"], config_dir=CONF)
    with pytest.raises(ValueError, match=re.escape("valid keys of conformal=none: [] (choose an option: "
                                                   "conformal=<name>).")):
        check_overrides(["conformal.alpha=0.05"], config_dir=CONF)
    with pytest.raises(ValueError, match=re.escape("Unknown key 'policy.costs.human_acuracy' in override "
                                                   "'policy.costs.human_acuracy=0.9' (did you mean "
                                                   "'policy.costs.human_accuracy'?); valid keys of policy.costs: [")):
        check_overrides(["policy=risk_control", "policy.costs.human_acuracy=0.9"], config_dir=CONF)


def test_nested_keys_of_a_sweep_are_checked_against_every_option():
    # a preset's own sweep (hydra.sweeper.params) chooses the calibrators: l2 is a key of none of them
    with pytest.raises(ValueError, match=re.escape("valid keys of calibrator=temperature, calibrator=vector_scaling, "
                                                   "calibrator=dirichlet_odir, calibrator=matrix_scaling_odir: [")):
        check_overrides(["-m", "experiment=kull2019", "calibrator.l2=1"], config_dir=CONF)
    # reg_lambda is a key of dirichlet only: the temperature job would fail, so the sweep is refused up front
    with pytest.raises(ValueError, match=re.escape(
            "Unknown key 'calibrator.reg_lambda' in override 'calibrator.reg_lambda=0.1' for calibrator=temperature "
            "(a key of calibrator=dirichlet only); valid keys of calibrator=temperature: ['log_t_bounds'].")):
        check_overrides(["-m", "calibrator=temperature,dirichlet", "calibrator.reg_lambda=0.1"], config_dir=CONF)
    # a key of every option's YAML passes unchanged; a constructor keyword no YAML has is set with ++
    args = ["-m", "calibrator=dirichlet,matrix_scaling", "calibrator.max_iter=100"]
    assert check_overrides(args, config_dir=CONF) == args
    out = check_overrides(["--multirun", "conformal=aps,lac", "conformal.tune_fraction=0.3"], config_dir=CONF)
    assert out == ["--multirun", "conformal=aps,lac", "++conformal.tune_fraction=0.3"]


def test_valid_nested_keys_pass_and_need_no_plus(compose):
    # plain keys of the chosen YAML: unchanged
    for args in (["calibrator.log_t_bounds=[-3,3]"], ["data=synthetic", "data.temperature=3"],
                 ["policy=risk_control", "policy.costs.escalation=0.5"], ["conformal=aps", "conformal.alpha=0.05"]):
        assert check_overrides(args, config_dir=CONF) == args
    # '+' on a key the YAML has (the old documented +data.labels_path) and a plain constructor keyword the YAML
    # lacks both become '++', which Hydra composes
    cases = [(["data=npz", "data.path=x.npy", "+data.labels_path=y.npz"], "data", "labels_path", "y.npz"),
             (["conformal=aps", "conformal.tune_fraction=0.3"], "conformal", "tune_fraction", 0.3)]
    for args, group, key, value in cases:
        assert key not in compose(args[:1])[group] or args[-1].startswith("+")
        out = check_overrides(args, config_dir=CONF)
        assert out[-1] == f"++{group}.{key}={value}"
        assert compose(out)[group][key] == value


def test_every_npz_argument_is_in_the_npz_yaml_with_the_standard_default():
    import inspect

    import yaml

    from calib.io import load_logits

    node = yaml.safe_load((CONF / "data" / "npz.yaml").read_text())
    params = inspect.signature(load_logits).parameters
    for name in ("mmap", "labels_path", "split_path", "logits_key", "labels_key", "split_key", "groups_key",
                 "label_column", "split_column", "group_column"):
        assert name in node, name
        assert node[name] == params[name].default, name
    assert node["chunk_rows"] is None  # experiments/calibrate.py's, popped before load_logits


DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "experiments").glob("*.py"))]
DOC_KEY = re.compile(r"(?<![\w./-])\+{0,2}(data|calibrator|conformal|policy)((?:\.[a-z_][a-z0-9_]*)+)=")


def _documented_keys():
    found = {}
    for path in DOC_FILES:
        text = path.read_text()
        for match in DOC_KEY.finditer(text):
            if f"Unknown key '{match.group(1)}{match.group(2)}'" in text:
                continue  # a typo shown on purpose, with its error
            found.setdefault((match.group(1), match.group(2)[1:]), path.relative_to(REPO).as_posix())
    return sorted(found.items())


def test_docs_name_component_keys():
    keys = dict(_documented_keys())
    assert ("data", "labels_path") in keys and ("calibrator", "log_t_bounds") in keys  # the parser finds them


@pytest.mark.parametrize("group_key,where", _documented_keys(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
def test_every_documented_component_key_is_in_a_yaml_of_its_group(group_key, where):
    import yaml

    group, key = group_key
    *sub, leaf = key.split(".")
    folder = CONF.joinpath(group, *sub)
    have = set()
    for path in folder.glob("*.yaml"):
        have |= set(yaml.safe_load(path.read_text()) or {})
    assert leaf in have, f"{group}.{key}= (in {where}) is in no conf/{'/'.join([group, *sub])}/*.yaml"


def test_data_file_key_names_flow_from_the_command_line_to_load_logits(compose, tmp_path):
    import numpy as np

    from calib._hydra import instantiate

    rng = np.random.default_rng(0)
    scores, y = rng.normal(size=(30, 3)).astype(np.float32), np.arange(30) % 3
    np.savez(tmp_path / "mine.npz", scores=scores, y=y)
    args = check_overrides(["data=npz", f"data.path={tmp_path / 'mine.npz'}", "data.logits_key=scores",
                            "data.labels_key=y"], config_dir=CONF)
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(compose(args).data, resolve=True)
    assert node.pop("chunk_rows") is None  # calibrate.py's own key, popped as calibrate.py does
    data = instantiate(OmegaConf.create(node))
    np.testing.assert_array_equal(data.logits, scores)
    np.testing.assert_array_equal(data.labels, y)


def _cli(*args, cwd=REPO):
    import subprocess
    import sys

    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": pythonpath}
    script, *rest = args
    return subprocess.run([sys.executable, str(REPO / script), *rest], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_calibrate_cli_nested_typo_fails_in_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli("experiments/calibrate.py", "calibrator.log_t_bound=[-3,3]", f"hydra.run.dir={run_dir}",
                cwd=tmp_path)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == ["calibrate.py: Unknown key 'calibrator.log_t_bound' in override 'calibrator.log_t_bound=[-3,3]' "
                     "(did you mean 'calibrator.log_t_bounds'?); valid keys of calibrator=temperature: "
                     "['log_t_bounds']."], lines
    assert not run_dir.exists() and sorted(tmp_path.iterdir()) == []


def test_calibrate_help_says_what_it_does_its_groups_and_defaults(tmp_path):
    from calib.config import HELP_GROUPS, help_groups

    proc = _cli("experiments/calibrate.py", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("calibrate.py: fit a calibrator")
    assert help_groups(config_dir=CONF) in text
    listed = [line.split(":")[0] for line in help_groups(config_dir=CONF).splitlines() if not line.startswith(" ")]
    assert listed == list(HELP_GROUPS)
    for group in ("calibrator", "conformal", "policy", "data", "experiment"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{group}: "))
        assert options(group)[0] in line
    assert "published:" not in text  # conf/published holds numbers for aggregate.py, not an option of calibrate.py
    assert "log_t_bounds:" in text and "n_bins: 15" in text and "cal_fraction: 0.5" in text  # the defaults
    assert sorted(tmp_path.iterdir()) == []  # --help runs nothing
    proc = _cli("experiments/calibrate.py", "calibrator=dirichlet", "--help", cwd=tmp_path)
    assert "reg_lambda: 0.0" in proc.stdout and "DirichletCalibration" in proc.stdout


def test_aggregate_help_says_what_it_reads_writes_and_returns():
    proc = _cli("experiments/aggregate.py", "--help")
    assert proc.returncode == 0, proc.stderr
    for text in ("usage: aggregate.py", "results.csv", "summary.md", "summary.png", "Exit status", "--strict",
                 "--pivot ROW,COL", "--published"):
        assert text in proc.stdout, text
