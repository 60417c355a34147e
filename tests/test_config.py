import json

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


@pytest.mark.parametrize("field", ["lr", "init_scale", "weight_decay", "noise", "noisy_noise"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_float_values_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
        Config().replace(**{field: value})


@pytest.mark.parametrize("literal", ["inf", "nan", "-inf"])
def test_non_finite_values_in_a_toml_file_are_refused(literal, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(f"[train]\nweight_decay = {literal}\n")
    with pytest.raises(ConfigError, match="weight_decay must be a finite number"):
        Config.from_toml(toml)


@pytest.mark.parametrize("change, message", [
    ({"eval_seed": -1}, "eval_seed must be in 0.."),
    ({"seed": 2**64}, "seed must be in 0.."),
    ({"seed": 2**63 - 1, "n_seeds": 2}, "seed must be in 0.."),
    ({"seed": -1}, "seed must be in 0.."),
])
def test_seeds_outside_the_hash_range_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(**change)


@pytest.mark.parametrize("change, field", [
    ({"eval_size": 10**12}, "eval_size"),
    ({"batch_size": 10**9}, "batch_size"),
    ({"long_max_len": 10**6}, "long_max_len"),
    ({"exhaustive_len": 10**4}, "exhaustive_len"),
    ({"heads": 100_000, "d_head": 4}, "heads"),
    ({"layers": 10_000}, "layers"),  # L x H heads, not H: each layer's heads and MLP count
    ({"layers": 400, "d_mlp": 64}, "layers"),
    ({"d_model": 10**6}, "d_model"),
    ({"n_seeds": 10**7}, "n_seeds"),
    ({"noise_symbols": 6, "pos_embed": "learned", "exhaustive_len": 14}, "noise_symbols"),
])
def test_sizes_that_cannot_fit_in_memory_are_refused_naming_the_field(change, field):
    with pytest.raises(ConfigError, match="more than this machine's") as e:
        Config().replace(**change)
    assert field in str(e.value).split("goes with")[1]


def test_the_default_and_study_configs_fit_with_room_to_spare():
    from count01.config import MEMORY

    for cfg in (Config(), Config(n_seeds=64, heads=8, d_head=4), Config(pos_embed="learned")):
        assert sum(cfg.memory_needs().values()) < MEMORY / 8


def test_a_key_in_two_toml_sections_is_refused(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nheads = 2\n[train]\nheads = 4\n")
    with pytest.raises(ConfigError, match="heads given twice"):
        Config.from_toml(toml)


def test_a_directory_as_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.from_toml(tmp_path)


def test_fields_added_later_leave_the_identity_of_older_configs_unchanged():
    from count01.config import ADDED_FIELDS

    old = {k: v for k, v in Config(heads=2).to_dict().items() if k not in ADDED_FIELDS}
    assert Config(heads=2).identity() == old  # what sweeps hashed before these fields existed
    assert Config(heads=2, optimizer="sgd").identity() == old | {"optimizer": "sgd"}
    assert Config(heads=2, burst_len=9.0).identity() == old  # unused under i.i.d. noise
    assert Config(heads=2, noise_pattern="bursty", burst_len=3.0).identity()["burst_len"] == 3.0
    sentence = Config(heads=2, framing="sentence", lm_loss=True)
    assert sentence.identity() == old | {"framing": "sentence", "lm_loss": True}
    assert sentence.n_ctx == Config(heads=2).n_ctx + 2  # ... EOS y EOS
    assert Config(heads=2, noise_symbols=3).identity() == old | {"noise_symbols": 3}


def test_a_config_saved_before_noise_symbols_loads_with_one_noise_symbol(tmp_path):
    saved = {k: v for k, v in Config(heads=2).to_dict().items() if k != "noise_symbols"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = Config.from_json(tmp_path / "config.json")
    assert cfg.noise_symbols == 1 and cfg.d_vocab == 5 and cfg == Config(heads=2)


def test_the_vocabulary_grows_with_the_noise_symbols():
    from count01.language import kind_ids, noise_ids, vocab

    assert Config().d_vocab == 5 and Config(noise_symbols=3).d_vocab == 7
    assert noise_ids(3) == (2, 5, 6) and kind_ids(3) == (0, 1, 2, 5, 6)
    assert vocab(3) == ("0", "1", "2", "EOS", "BOS", "5", "6")


@pytest.mark.parametrize("change, message", [({"optimizer": "adam"}, "optimizer must be one of"),
                                             ({"schedule": "linear"}, "schedule must be one of"),
                                             ({"warmup": -1}, "warmup must be in 0..steps"),
                                             ({"warmup": 4000}, "warmup must be in 0..steps")])
def test_bad_optimiser_and_schedule_values_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(**change)
