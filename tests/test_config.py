import pytest

from count01.config import Config, ConfigError


def test_default_config_is_valid_and_matches_the_spec_defaults():
    cfg = Config().validate()
    assert (cfg.min_len, cfg.max_len, cfg.noise, cfg.bos) == (1, 32, 0.25, True)
    assert (cfg.heads, cfg.d_model, cfg.d_head_, cfg.pos_embed, cfg.layernorm) == (4, 16, 4, "none", False)
    assert cfg.count_path


@pytest.mark.parametrize("change, message", [
    ({"heads": 0}, "heads must be positive"),
    ({"d_model": -4}, "d_model must be positive"),
    ({"heads": 3}, "not divisible"),
    ({"noise": 1.0}, "noise must be in [0, 1)"),
    ({"noise": -0.1}, "noise must be in [0, 1)"),
    ({"pos_embed": "rotary"}, "pos_embed must be one of"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"min_len": 40}, "min_len"),
    ({"steps": 0}, "steps must be positive"),
    *[({name: 0}, f"{name} must be positive") for name in (
        "max_len", "n_seeds", "batch_size", "checkpoint_every", "eval_size", "exhaustive_len")],
    ({"d_head": -1}, "d_head must be positive"),
    ({"noisy_noise": 1.2}, "noisy_noise must be in [0, 1)"),
])
def test_bad_values_raise_one_clear_config_error(change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        Config().replace(**change)


def test_heads_need_not_divide_d_model_when_d_head_is_given():
    assert Config(heads=3, d_head=4).validate().d_head_ == 4


def test_unknown_and_mistyped_options_are_rejected():
    with pytest.raises(ConfigError, match="unknown option"):
        Config.from_dict({"hedas": 4})
    with pytest.raises(ConfigError, match="heads expects int"):
        Config.from_dict({"heads": "four"})
    with pytest.raises(ConfigError, match="layernorm expects bool"):
        Config.from_dict({"layernorm": 3})


def test_toml_with_sections_round_trips(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nheads = 2\npos_embed = "learned"\n[training]\nlr = 0.003\n')
    cfg = Config.from_toml(path)
    assert (cfg.heads, cfg.pos_embed, cfg.lr) == (2, "learned", 0.003)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_malformed_toml_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("heads = = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_toml(path)
