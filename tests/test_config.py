"""Config: defaults are the paper's recipe, files and overrides merge, errors quote values."""

import dataclasses

import pytest

from cmxl_keras import architecture, config, settings
from cmxl_keras.config import Config, ConfigError


def test_defaults_are_the_paper_recipe():
    c = Config()
    assert (c.width, c.depth, c.patch_size, c.kernel_size) == (256, 8, 2, 5)
    assert (c.activation, c.skip_period) == ("gelu", 0)
    assert (c.epochs, c.batch_size, c.lr_max, c.weight_decay) == (100, 128, 0.005, 0.01)
    assert c.adam_epsilon == 1e-8 and c.clip_norm == 0.0 and c.label_smoothing == 0.0
    assert (c.crop_scale_min, c.crop_scale_max, c.flip) == (0.75, 1.0, True)
    assert (c.randaugment_ops, c.randaugment_magnitude) == (2, 12)
    assert (c.jitter_brightness, c.jitter_contrast, c.jitter_saturation) == (0.2, 0.2, 0.2)
    assert c.erase_prob == 0.2 and c.cutmix_prob == 0.0 and c.mixup_prob == 0.0
    assert c.seed == 1024 and c.val_size == 5000 and c.aug == "paper"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().depth = 4


@pytest.mark.parametrize("variant", list(architecture.VARIANTS))
def test_each_table1_file_matches_its_variant(variant):
    loaded = settings.load(variant)
    assert loaded == config.variant_config(variant)
    # The files hold only what differs from the paper's recipe.
    with open(settings.resolve_path(variant)) as f:
        keys = [line.split("=")[0].strip() for line in f
                if "=" in line and not line.startswith("#")]
    defaults = Config()
    assert all(getattr(loaded, k) != getattr(defaults, k) or k == "name" for k in keys)


def test_smoke_config_is_small():
    smoke = settings.load("smoke")
    assert smoke.width <= 64 and smoke.epochs <= 3 and smoke.limit_train <= 512
    assert smoke.skip_period > 0  # exercises the long skips


def test_round_trip_through_toml_and_dict(tmp_path):
    original = Config().replace(name="rt", depth=66, skip_period=3, activation="silu",
                                lr_max=0.001, flip=False, data_dir="/x y/z")
    path = tmp_path / "c.toml"
    path.write_text(original.to_toml())
    assert settings.load(str(path)) == original
    assert config.from_dict(original.to_dict()) == original


def test_precedence_file_then_flags_then_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('depth = 66\nskip_period = 3\nepochs = 5\n')
    c = settings.resolve(str(path), ["epochs=7", "activation=swish"], depth=None, epochs=6)
    assert (c.depth, c.skip_period, c.epochs, c.activation) == (66, 3, 7, "swish")


def test_parse_override_types():
    assert config.parse_override("epochs=3") == ("epochs", 3)
    assert config.parse_override("lr_max=1e-3") == ("lr_max", 0.001)
    assert config.parse_override("flip=false") == ("flip", False)
    assert config.parse_override("name = abc") == ("name", "abc")


@pytest.mark.parametrize("changes,quoted", [
    (dict(depth=0), "depth must be an integer >= 1, got 0"),
    (dict(depth=65, skip_period=3), "depth 65 is not divisible by skip_period 3"),
    (dict(activation="tanh"), "'activation' has value 'tanh'"),
    (dict(aug="heavy"), "'aug' has value 'heavy'; allowed values: paper, none"),
    (dict(precision="fp8"), "'precision' has value 'fp8'"),
    (dict(erase_prob=1.5), "'erase_prob' has value 1.5; it must be between 0.0 and 1.0"),
    (dict(randaugment_magnitude=31), "'randaugment_magnitude' has value 31"),
    (dict(epochs=0), "'epochs' has value 0; it must be >= 1"),
    (dict(lr_max=0.0), "'lr_max' must be > 0, got 0.0"),
    (dict(crop_scale_min=0.9, crop_scale_max=0.8), "crop_scale_min 0.9 is above"),
    (dict(patch_size=3), "image size 32 is not divisible by patch_size 3"),
    (dict(depth="8"), "'depth' in the overrides must be an integer, got '8'"),
    (dict(epochs=True), "'epochs' in the overrides must be an integer, got True"),
    (dict(flip=1), "'flip' in the overrides must be true or false, got 1"),
    (dict(lr_max=float("nan")), "'lr_max' must be a finite number"),
    (dict(name="../up"), "'name' must be a plain file-name-safe word"),
    (dict(dept=8), "unknown config key 'dept' in the overrides. Did you mean 'depth'?"),
])
def test_bad_values_are_errors_quoting_key_and_value(changes, quoted):
    with pytest.raises(ConfigError) as info:
        Config().replace(**changes)
    assert quoted in str(info.value)


@pytest.mark.parametrize("text,quoted", [
    ("depth = [1, 2", "is not valid TOML"),
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("widht = 3\n", "unknown config key 'widht'"),
    ("depth = \"eight\"\n", "'depth' in config file"),
    ("[model]\ndepth = 8\n", "has a [model] table"),
])
def test_bad_files(tmp_path, text, quoted):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        settings.load(str(path))
    assert quoted in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text,quoted", [
    ("epochs", "--set expects key=value, got 'epochs'"),
    ("epochs=ten", "--set epochs='ten': epochs must be an integer"),
    ("flip=maybe", "flip must be true or false"),
    ("nope=1", "unknown config key 'nope' in --set nope=1"),
])
def test_bad_overrides(text, quoted):
    with pytest.raises(ConfigError) as info:
        config.parse_override(text)
    assert quoted in str(info.value)


def test_missing_file_lists_known_names():
    with pytest.raises(ConfigError) as info:
        settings.load("no_such_config")
    assert "'no_such_config' not found" in str(info.value)
    assert "cm_xl" in str(info.value) and "smoke" in str(info.value)


def test_a_run_nothing_names_is_named_after_its_architecture():
    user = settings.resolve(None, (), depth=66, skip_period=3, activation="swish")
    assert user.name == "convmixer-256-66-s3-swish"
    assert settings.resolve().name == "convmixer-256-8-gelu"  # the paper's ConvMixer-256/8
    assert settings.resolve(None, ("patch_size=4", "kernel_size=9", "num_classes=100"),
                          width=128).name == "convmixer-128-8-p4-k9-gelu-c100"
    # A name from a config file, --name or --set wins, and a resumed run keeps its own.
    assert settings.resolve("smoke", (), depth=8).name == "smoke"
    assert settings.resolve("cm_vanilla").name == "cm_vanilla"  # the default's name, named
    assert settings.resolve(None, (), name="mine", depth=66, skip_period=3).name == "mine"
    assert settings.resolve(None, ("name=mine",)).name == "mine"
    saved = config.Config(name="old_run")
    assert settings.resolve(None, (), base=saved, epochs=3).name == "old_run"


def test_the_dataset_sets_its_classes_unless_given():
    assert settings.resolve(None, ("dataset=cifar100",)).num_classes == 100
    assert settings.resolve("cm_xl_cifar100").num_classes == 100
    assert settings.resolve("cm_vanilla_cifar100").dataset == "cifar100"
    # An explicit num_classes wins (the data check then names any mismatch).
    assert settings.resolve(None, ("dataset=cifar100", "num_classes=20")).num_classes == 20
    back = settings.resolve(None, ("dataset=cifar10",), base=Config(dataset="cifar100",
                                                                 num_classes=100))
    assert back.num_classes == 10
    with pytest.raises(ConfigError, match="'imagenet'; allowed values: cifar10, cifar100"):
        settings.resolve(None, ("dataset=imagenet",))
