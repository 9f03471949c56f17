"""Config: defaults, YAML/JSON files, dotted overrides, and validation before any work."""
import json
from pathlib import Path

import pytest
import yaml

from demp import DempError
from demp.app.config import Config, config_diff, config_from_dict, config_to_dict, load_config
from demp.app.methods import MethodConfig

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                 if not p.name.startswith("sweep")      # sweep and study files are not run configs
                 and (p.parent.name != "study" or p.name == "base.yaml"))


def test_defaults_are_the_main_job():
    cfg = load_config(None)
    assert cfg == Config().validate()
    assert (cfg.data.name, cfg.model.name, cfg.method.name, cfg.optim.name) == (
        "fashion_mnist", "small_cnn", "demp", "adamw")
    assert isinstance(cfg.method, MethodConfig)


def test_overrides_parse_yaml_values_into_field_types():
    cfg = load_config(None, ["train.epochs=1", "optim.lr=1e-3", "optim.milestones=[0.5, 0.75]",
                             "method.quasi_eps=[1e-3]", "model.kwargs.channels=[8, 16]",
                             "data.subset=100", "threads=2", "data.augment=true", "data.root=/x"])
    assert cfg.train.epochs == 1 and cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.milestones == (0.5, 0.75) and cfg.method.quasi_eps == (1e-3,)
    assert cfg.model.kwargs == {"channels": [8, 16]}
    assert (cfg.data.subset, cfg.threads, cfg.data.augment, cfg.data.root) == (100, 2, True, "/x")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_then_overrides(tmp_path, suffix):
    raw = {"model": {"name": "mlp", "width": 0.25}, "method": {"name": "dense"}, "seed": 3}
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(raw) if suffix == ".json" else yaml.safe_dump(raw))
    cfg = load_config(str(path), ["seed=4"])
    assert (cfg.model.name, cfg.model.width, cfg.method.name, cfg.seed) == ("mlp", 0.25, "dense", 4)
    assert cfg.train == Config().train  # untouched sections keep the defaults


def test_round_trip_through_dict_and_yaml():
    cfg = load_config(None, ["optim.milestones=[0.2]", "model.kwargs.hidden=64", "method.quasi_eps=[0.1]"])
    text = yaml.safe_dump(config_to_dict(cfg))
    assert config_from_dict(yaml.safe_load(text)) == cfg


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.lr=-1e-3", "optim.lr must be > 0"),
    ("method.prune_every=0", r"method settings \(method.\*\): prune_every must be >= 1"),
    ("model.width=0", "model.width must be > 0"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("train.epochs=1.5", "train.epochs must be a whole number"),
    ("data.augment=3", "data.augment must be true or false"),
    ("method.reg_form=l3", "unknown reg_form 'l3'"),
    ("optim.milestones=[0.6, 0.3]", "optim.milestones must be increasing"),
    ("optim.schedule=warmup_step", "unknown optim.schedule 'warmup_step'"),
    ("data.name=imagefolder", "needs data.root"),
    ("optim.warmup_epochs=1", "'one_cycle' has its own warm-up"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(DempError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override, listed", [
    ("model.name=resnet9", "small_cnn"),
    ("optim.name=adam", "adamw, sgd"),
    ("method.name=magic", "demp"),
    ("data.name=mnist", "fashion_mnist"),
    ("device=tpu", "auto, cpu, cuda"),
])
def test_unknown_names_list_the_valid_ones(override, listed):
    with pytest.raises(DempError, match=f"unknown .*valid: .*{listed}"):
        load_config(None, [override])


def test_unknown_keys_list_the_section_keys(tmp_path):
    with pytest.raises(DempError, match=r"unknown key 'train.epoch' in --set; valid keys of section "
                                        r"'train': epochs, batch_size"):
        load_config(None, ["train.epoch=1"])
    with pytest.raises(DempError, match=r"unknown key 'trian'.*valid keys of the top level: data, model"):
        load_config(None, ["trian.epochs=1"])
    with pytest.raises(DempError, match="expects key=value"):
        load_config(None, ["train.epochs"])
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(DempError, match=r"unknown key 'optim.learning_rate' in config file .*bad.yaml; "
                                        r"valid keys of section 'optim': name, lr"):
        load_config(str(path))


def test_unreadable_files(tmp_path):
    with pytest.raises(DempError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    path = tmp_path / "broken.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(DempError, match="cannot parse"):
        load_config(str(path))
    path.write_text("train: 3\n")
    with pytest.raises(DempError, match="section 'train' must be a mapping"):
        load_config(str(path))


def test_config_diff_names_dotted_keys():
    a = load_config(None)
    b = load_config(None, ["optim.lr=0.1", "method.reg_peak=0.5", "out=elsewhere"])
    assert config_diff(a, b) == ["method.reg_peak", "optim.lr", "out"]
    assert config_diff(a, b, ignore=["out"]) == ["method.reg_peak", "optim.lr"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(str(path))


def test_main_job_config_file_equals_the_defaults():
    path = Path(__file__).parents[1] / "configs" / "fashion_mnist_demp.yaml"
    assert load_config(str(path)) == Config()


def test_each_method_owns_its_settings():
    with pytest.raises(DempError, match=r"method 'demp' has no such setting; its settings: reg_peak"):
        load_config(None, ["method.rounds=3"])
    with pytest.raises(DempError, match="method 'dense' has no such setting"):
        load_config(None, ["method.name=dense", "method.target=0.3"])
    snap = load_config(None, ["method.name=snap", "method.target=0.3"])  # over the DemP main job
    assert (snap.method.name, snap.method.target, snap.method.rounds) == ("snap", 0.3, 5)
    assert set(config_to_dict(snap)["method"]) == {"name", "target", "min_units", "rounds", "score_batches"}
    demp_budget = load_config(None, ["method.target=0.4"])  # DemP reads target as its units budget
    assert demp_budget.method.target_units == 0.4 and demp_budget.method.reg_peak == 5e-2


def test_names_accept_dashes_and_suggest_the_closest():
    cfg = load_config(None, ["data.name=fashion-mnist", "method.name=Early-SNAP"])
    assert (cfg.data.name, cfg.method.name) == ("fashion_mnist", "earlysnap")
    with pytest.raises(DempError, match="did you mean 'cifar10'"):
        load_config(None, ["data.name=cifar-100"])


def test_on_off_yes_no_reach_string_settings_as_strings(tmp_path):
    """YAML 1.2 booleans: only true/false are booleans, so autocast=off is the string 'off'; a
    boolean given for an on/off string setting becomes 'on'/'off', and a boolean setting takes
    on/off/yes/no."""
    cfg = load_config(None, ["train.autocast=off", "train.channels_last=true", "train.compile=no",
                             "train.eval_every_epoch=yes"])
    assert cfg.train.autocast == "off" and cfg.train.channels_last == "on"
    assert cfg.train.compile is False and cfg.train.eval_every_epoch is True
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  channels_last: off\n  autocast: auto\n  compile: off\n")
    cfg = load_config(str(path))
    assert cfg.train.channels_last == "off" and cfg.train.compile is False
    with pytest.raises(DempError, match="train.channels_last"):
        load_config(None, ["train.channels_last=sometimes"])
    with pytest.raises(DempError, match="train.compile must be true or false"):
        load_config(None, ["train.compile=sometimes"])


def test_a_budget_set_on_the_command_line_replaces_the_other_kind(tmp_path):
    cfg = load_config(None, ["method.target_flops=0.5"])          # over the main job's units budget
    assert (cfg.method.target_units, cfg.method.target_flops) == (None, 0.5)
    path = tmp_path / "flops.yaml"
    path.write_text("method: {target_units: null, target_flops: 0.5}\n")
    cfg = load_config(str(path), ["method.target=0.3"])            # the alias of target_units, over a file
    assert (cfg.method.target_units, cfg.method.target_flops) == (0.3, None)
    with pytest.raises(DempError, match="give one budget"):        # both on the command line: a conflict
        load_config(None, ["method.target_flops=0.5", "method.target_units=0.3"])


def test_sparse_settings_without_a_sparse_method_are_refused(tmp_path):
    with pytest.raises(DempError, match="sparse.density has no effect while sparse.method is 'none'"):
        load_config(None, ["sparse.density=0.2"])
    assert load_config(None, ["sparse.method=rigl", "sparse.density=0.2"]).sparse.density == 0.2
    path = tmp_path / "sparse.yaml"
    path.write_text("sparse: {density: 0.1}\n")                  # no method: it would turn RigL on unasked
    with pytest.raises(DempError, match="no sparse.method"):
        load_config(str(path))
    path.write_text("sparse: {method: none, density: 0.1}\n")
    with pytest.raises(DempError, match="sparse.density has no effect"):
        load_config(str(path))
    saved = tmp_path / "run.yaml"                                   # a run's config.yaml (every key) loads
    saved.write_text(yaml.safe_dump(config_to_dict(load_config())))
    assert load_config(str(saved)).sparse.method == "none"
