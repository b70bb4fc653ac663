"""Configuration: presets from configs.py, validation naming the option, JSON round trip."""
from __future__ import annotations

import dataclasses
import json

import pytest

from poetry_gpt.presets import load_presets
from poetry_gpt.config import DataConfig, ModelConfig, RunConfig, TrainConfig, config_from_preset
from poetry_gpt.errors import OptionError

PRESETS = load_presets()


def test_defaults_are_the_small_benchmark_model():
    small = config_from_preset("small")
    assert small == RunConfig(preset="small")
    assert (small.model.n_layer, small.model.n_embd, small.model.n_head, small.model.n_ctx) == (6, 384, 6, 128)
    assert small.train.batch_size == 16


@pytest.mark.parametrize("name, shape", [
    ("tiny", (2, 64, 64)),
    ("small", (6, 384, 128)),
    ("base", (12, 768, 256)),
    ("medium", (24, 1024, 256)),
])
def test_presets_resolve(name, shape):
    config = config_from_preset(name)
    assert config.preset == name
    assert (config.model.n_layer, config.model.n_embd, config.model.n_ctx) == shape
    assert config.model.n_embd % config.model.n_head == 0
    # every preset lists only what differs from the defaults
    spec = PRESETS[name]
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        defaults = dataclasses.asdict(cls())
        for key, value in spec.get(section, {}).items():
            assert defaults[key] != value, f"{name}.{section}.{key} repeats the default"


def test_unknown_preset_lists_the_choices():
    with pytest.raises(OptionError, match=r"--config: unknown preset 'huge'; choose one of tiny, small, base, medium"):
        config_from_preset("huge")


def test_preset_with_unknown_setting():
    with pytest.raises(OptionError, match=r"model: unknown setting\(s\) n_layers; valid: .*n_layer"):
        config_from_preset("bad", {"bad": {"model": {"n_layers": 2}}})


@pytest.mark.parametrize("cls, field, value, option", [
    (DataConfig, "valid_fraction", 0.0, "--valid-fraction"),
    (DataConfig, "valid_fraction", 1.0, "--valid-fraction"),
    (DataConfig, "min_count", 0, "--min-count"),
    (DataConfig, "max_chars", 7, "--max-chars"),
    (DataConfig, "shard_poems", 0, "--shard-poems"),
    (ModelConfig, "n_layer", 0, "model.n_layer"),
    (ModelConfig, "n_head", 5, "model.n_head"),
    (ModelConfig, "n_ctx", 8, "model.n_ctx"),
    (ModelConfig, "dropout", 1.0, "--dropout"),
    (TrainConfig, "batch_size", 0, "--batch-size"),
    (TrainConfig, "epochs", 0, "--epochs"),
    (TrainConfig, "steps_per_epoch", -1, "--steps-per-epoch"),
    (TrainConfig, "learning_rate", 0.0, "--learning-rate"),
    (TrainConfig, "min_lr_ratio", 1.5, "--min-lr-ratio"),
    (TrainConfig, "warmup_steps", -1, "--warmup-steps"),
    (TrainConfig, "schedule", "step", "--schedule"),
    (TrainConfig, "weight_decay", -0.1, "--weight-decay"),
    (TrainConfig, "beta2", 1.0, "--beta1/--beta2"),
    (TrainConfig, "grad_clip", -1.0, "--grad-clip"),
    (TrainConfig, "precision", "fp8", "--precision"),
    (TrainConfig, "keep_checkpoints", 0, "--keep-checkpoints"),
    (TrainConfig, "checkpoint_every", -1, "--checkpoint-every"),
    (TrainConfig, "samples_per_epoch", -1, "--samples-per-epoch"),
    (TrainConfig, "strategy", "tpu", "--strategy"),
    (TrainConfig, "attention", "document", "--attention"),
])
def test_invalid_values_name_the_option(cls, field, value, option):
    with pytest.raises(OptionError) as info:
        cls(**{field: value})
    message = str(info.value)
    assert message.startswith(f"{option}: ") and "\n" not in message
    assert repr(value) in message or str(value) in message or option == "--beta1/--beta2"


def test_choice_errors_list_the_choices():
    with pytest.raises(OptionError, match="must be one of cosine, linear, constant"):
        TrainConfig(schedule="step")
    with pytest.raises(OptionError, match="must be one of auto, fp32, bf16, fp16"):
        TrainConfig(precision="fp8")


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().n_layer = 3


@pytest.mark.parametrize("name", list(PRESETS))
def test_run_config_json_round_trip(name):
    config = config_from_preset(name).replace(model={"dropout": 0.2}, train={"learning_rate": 2e-4, "epochs": 3})
    text = json.dumps(config.to_dict())
    back = RunConfig.from_dict(json.loads(text))
    assert back == config
    assert back.model.dropout == 0.2 and back.train.epochs == 3 and back.preset == name


def test_run_config_from_dict_validates():
    with pytest.raises(OptionError, match=r"train: unknown setting\(s\) lr"):
        RunConfig.from_dict({"model": {}, "train": {"lr": 1}})
    with pytest.raises(OptionError, match="--batch-size"):
        RunConfig.from_dict({"train": {"batch_size": 0}})
    assert RunConfig.from_dict({}).preset == "custom"


def test_new_runs_attend_within_poems_and_runs_recorded_before_keep_row_attention():
    """A run.json written before ``attention`` existed trained with the whole row visible: resuming it keeps that."""
    assert TrainConfig().attention == "poem" and config_from_preset("tiny").train.attention == "poem"
    recorded = RunConfig().to_dict()
    del recorded["train"]["attention"]
    assert RunConfig.from_dict(recorded).train.attention == "row"
    recorded["train"]["attention"] = "poem"
    assert RunConfig.from_dict(recorded).train.attention == "poem"


def test_replace_validates():
    with pytest.raises(OptionError, match="model.n_head"):
        RunConfig().replace(model={"n_head": 7})
    with pytest.raises(OptionError, match=r"train: unknown setting\(s\) no_such_field"):
        RunConfig().replace(train={"no_such_field": 1})
    assert RunConfig().replace() == RunConfig()


def test_presets_come_from_the_checkout_file_and_take_no_global_module_name():
    import sys

    from poetry_gpt import presets

    assert presets.presets_file() == presets.PACKAGE_DIR.parent / "configs.py"  # a checkout: the file users edit
    config_from_preset("tiny")
    assert "configs" not in sys.modules  # never imported as a top-level module a user's project may own


def test_an_installed_wheel_reads_the_copy_shipped_in_the_package(tmp_path, monkeypatch):
    from poetry_gpt import presets
    from poetry_gpt.errors import EnvironmentProblem

    package = tmp_path / "site" / "poetry_gpt"
    package.mkdir(parents=True)
    monkeypatch.setattr(presets, "PACKAGE_DIR", package)
    with pytest.raises(EnvironmentProblem, match="no presets"):
        presets.presets_file()
    (package / presets.SHIPPED).write_text('PRESETS = {"mine": {"model": {"n_layer": 3}}}\n', encoding="utf-8")
    assert presets.presets_file() == package / presets.SHIPPED
    assert config_from_preset("mine").model.n_layer == 3
    checkout = package.parent / "configs.py"  # beside the package as well: the file users edit wins
    checkout.write_text('PRESETS = {"mine": {"model": {"n_layer": 4}}}\n', encoding="utf-8")
    assert presets.presets_file() == checkout and config_from_preset("mine").model.n_layer == 4
    checkout.unlink()
    (package / presets.SHIPPED).write_text("OTHER = 1\n", encoding="utf-8")
    with pytest.raises(EnvironmentProblem, match="defines no PRESETS"):
        presets.load_presets()


def test_a_broken_preset_file_is_one_line_naming_file_and_line(tmp_path):
    from poetry_gpt.errors import InputError
    from poetry_gpt.presets import load_presets

    broken = tmp_path / "configs.py"
    broken.write_text('PRESETS = {\n    "tiny": {"model": {"n_layer": 2}\n', encoding="utf-8")  # a brace left open
    with pytest.raises(InputError, match=r"configs\.py:\d+: .*fix the preset file"):
        load_presets(broken)
    broken.write_text("PRESETS = {'tiny': undefined_name}\n", encoding="utf-8")
    with pytest.raises(InputError, match="NameError while reading the presets"):
        load_presets(broken)
