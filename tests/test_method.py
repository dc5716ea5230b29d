"""One typed, validated method description (``rdpo_zoo.method.Method``) that every way of building a run ends in,
run settings checked however they are built, and every train flag from one generator."""

import dataclasses

import pytest

from rdpo_zoo.config import RunSettings, SettingError, TrainConfig, run_setting_fields
from rdpo_zoo.method import Method
from rdpo_zoo.parts import PART_SETTINGS, SETTINGS, OptionError
from rdpo_zoo.resolve import merge_settings


def test_a_method_is_typed_and_checked_field_by_field():
    method = Method.from_settings({"num_steps": "12", "threshold": "0.5", "gradient_guidance": "none"})
    assert (method.num_steps, method.threshold, method.gradient_guidance) == (12, 0.5, None)
    assert [f.name for f in dataclasses.fields(Method)] == [o.name for o in SETTINGS]
    with pytest.raises(OptionError, match="method setting 'num_steps': expected int >= 1, got 0"):
        Method(num_steps=0)
    with pytest.raises(OptionError, match="method setting 'gap_rule': expected one of raw, softmax"):
        Method().replace(gap_rule="soft")
    with pytest.raises(OptionError, match="unknown setting 'nm_steps'; did you mean 'num_steps'"):
        Method.from_settings({"nm_steps": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.num_steps = 3


def test_every_way_of_building_a_run_ends_in_one_method_and_config_json_is_unchanged(tmp_path):
    from rdpo_zoo.cli.train_cmd import resolve_config

    settings = merge_settings("spo", {"num_steps": 8})
    config = TrainConfig(settings, RunSettings())
    assert isinstance(config.method, Method) and config.method.gap_rule == "softmax"
    assert config.to_dict()["method"] == settings  # the method table of config.json, key for key and in order
    assert list(config.to_dict()["method"]) == list(settings)
    assert TrainConfig.from_dict(config.to_dict()).method == config.method
    assert resolve_config("spo", {"num_steps": 8}, {}).method == config.method
    (tmp_path / "run.toml").write_text('preset = "spo"\nnum_steps = 8\n')
    assert resolve_config(None, {}, {}, tmp_path / "run.toml").method == config.method
    with pytest.raises(OptionError, match="method setting 'num_steps'"):
        TrainConfig({**settings, "num_steps": -1}, RunSettings())


def test_run_settings_are_checked_however_they_are_built():
    with pytest.raises(SettingError, match=r"run setting iterations: expected a value >= 1, got 0"):
        RunSettings(iterations=0)
    with pytest.raises(SettingError, match=r"run setting iterations: expected an integer, got '3'"):
        RunSettings(iterations="3")
    with pytest.raises(SettingError, match=r"run setting mixed_precision: expected one of no, fp16, bf16, got 'fp8'"):
        RunSettings(mixed_precision="fp8")
    # the paper study builds RunSettings from its specs: checked the same way
    from benchmarks.paper.runs import RunSpec

    with pytest.raises(SettingError, match="minibatch_size"):
        RunSpec("rdpo", run={"minibatch_size": 0}).train_config("-")


def test_every_train_flag_comes_from_one_generator():
    from rdpo_zoo.cli.train_cmd import train

    names = {p.name for p in train.params}
    method = {o.name for o in SETTINGS if o.name not in PART_SETTINGS and o.name not in PART_SETTINGS.values()}
    run = {f.name for f in run_setting_fields()}
    assert method | run <= names
    flags = {p.name: p for p in train.params}
    assert flags["num_steps"].default is None and flags["iterations"].default is None  # "not given"
    assert flags["model_options"].multiple and flags["quiet"].secondary_opts == ["--no-quiet"]
    assert list(flags["mixed_precision"].type.choices) == ["no", "fp16", "bf16"]
