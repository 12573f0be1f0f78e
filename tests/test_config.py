import pytest

from aigc.config import TrainConfig, config_from_dict, config_to_dict, parse_cli_value
from aigc.errors import ConfigError
from aigc.models.vae import VAEConfig


def test_round_trip_keeps_every_field():
    cfg = VAEConfig(channels=(8, 16), latent_dim=5, likelihood="gaussian")
    assert config_from_dict(VAEConfig, config_to_dict(cfg)) == cfg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key.*'latent_size'.*known keys:.*latent_dim"):
        config_from_dict(VAEConfig, {"latent_size": 3})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"latent_dim": "8"}, "latent_dim must be an integer, got '8'"),
        ({"latent_dim": 2.5}, "must be an integer"),
        ({"binarize": 1}, "must be true or false"),
        ({"likelihood": "poisson"}, "must be one of \\['bernoulli', 'gaussian'\\]"),
        ({"channels": 32}, "must be a list"),
        ({"latent_dim": 0}, "latent_dim must be > 0, got 0"),
        ({"image_size": 30}, "divisible by 2\\*\\*len\\(channels\\)=4"),
    ],
)
def test_wrong_values_are_rejected_with_the_field_and_value(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(VAEConfig, data, where="test.json")


def test_int_is_accepted_for_float_and_list_for_tuple():
    cfg = config_from_dict(TrainConfig, {"lr": 1, "betas": [0.5, 0.9]} | {"lr": 0.5})
    assert cfg.lr == 0.5 and cfg.betas == (0.5, 0.9) and isinstance(cfg.betas, tuple)


def test_train_config_bounds():
    with pytest.raises(ConfigError, match="lr must be in \\(0, 1\\), got 5"):
        TrainConfig(lr=5)
    with pytest.raises(ConfigError, match="batch_size must be > 0"):
        TrainConfig(batch_size=0)


def test_cli_values_are_parsed_by_type():
    assert parse_cli_value("3", int, "steps") == 3
    assert parse_cli_value("1e-3", float, "lr") == 1e-3
    assert parse_cli_value("false", bool, "bf16") is False
    assert parse_cli_value("16,32", tuple[int, ...], "channels") == (16, 32)
    with pytest.raises(ConfigError, match="--steps expects a number"):
        parse_cli_value("many", int, "steps")
