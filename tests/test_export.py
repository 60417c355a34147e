import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from count01.cli import main
from count01.config import Config
from count01.export import (
    CONFIG,
    STATE_DICT,
    ExportError,
    save_transformer_lens,
    tl_state_dict,
    to_transformer_lens,
)
from count01.language import EOS, exhaustive
from count01.model import Model, weight_shapes
from count01.train import train

needs_lens = pytest.mark.skipif(importlib.util.find_spec("transformer_lens") is None,
                                reason="TransformerLens not installed (pip install count01[lens])")

SMALL = Config(steps=300, n_seeds=2, max_len=8, long_max_len=12, exhaustive_len=6,
               eval_size=512, checkpoint_every=300)
CONFIGS = {"default": SMALL, "2_layers+mlp+learned_pos+layernorm": SMALL.replace(
    layers=2, d_mlp=8, pos_embed="learned", layernorm=True, steps=150),
    "learned_pos+layernorm": SMALL.replace(pos_embed="learned",
                                                                      layernorm=True)}


@pytest.fixture(scope="module")
def trained():
    return {name: train(cfg, progress=False) for name, cfg in CONFIGS.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    train(SMALL.replace(steps=40), out, progress=False)
    return out


@needs_lens
@pytest.mark.parametrize("name", CONFIGS)
def test_transformer_lens_copy_has_our_logits_and_eos_attention_on_exhaustive(trained, name):
    model = trained[name]
    seed_index = 1
    tl = to_transformer_lens(model, seed_index)
    batch = exhaustive(model.cfg, tokens=True, max_len=8)  # 9840 strings, right-padded
    rows = torch.arange(len(batch))
    with torch.no_grad():
        ours = model.select(seed_index).run(batch, force_tokens=True)
        logits, cache = tl.run_with_cache(batch.tokens)
    torch.testing.assert_close(logits[rows, batch.eos_pos], ours.logits[0], atol=1e-4, rtol=0)
    for n, c in enumerate(model.select(seed_index).run_layers(batch, force_tokens=True)):  # each layer
        pattern = cache[f"blocks.{n}.attn.hook_pattern"][rows, :, batch.eos_pos]  # (B, H, K)
        torch.testing.assert_close(pattern, c.pattern[0], atol=1e-5, rtol=0)
        z = cache[f"blocks.{n}.attn.hook_z"][rows, batch.eos_pos]  # (B, H, d_head)
        torch.testing.assert_close(z, c.z[0], atol=1e-4, rtol=0)
        resid = cache[f"blocks.{n}.hook_resid_post"][rows, batch.eos_pos]
        torch.testing.assert_close(resid, c.resid[0], atol=1e-4, rtol=0)
    # the trained model really is a non-trivial function: answers differ across strings
    assert logits[rows, batch.eos_pos].argmax(-1).unique().numel() >= 2


@needs_lens
def test_the_export_check_reads_the_sentence_framings_ending_too():
    """In the sentence framing the check compares the logits at the answer and at the ending:
    the seed's own copy agrees, and a copy wrong at the ending alone is caught."""
    from count01.export import TOLERANCE, max_logit_error

    model = train(SMALL.replace(steps=40, framing="sentence"), progress=False)
    tl = to_transformer_lens(model, 1)
    assert max_logit_error(model, 1, tl) < TOLERANCE

    def wrong_ending(tokens):  # TL's logits, off by one at every position after a first EOS
        logits = tl(tokens)
        after = (tokens == EOS).cumsum(-1) >= 1
        return logits + (after & (tokens != EOS))[..., None]

    assert max_logit_error(model, 1, wrong_ending) > 0.5
    answers_only = Model(model.cfg.replace(framing="classify"), model.weights, model.seeds)
    assert max_logit_error(answers_only, 1, wrong_ending) < TOLERANCE  # the answers agree


@needs_lens
def test_different_seeds_export_different_models(trained):
    model = trained["default"]
    batch = exhaustive(model.cfg, tokens=True, max_len=4)
    with torch.no_grad():
        a, b = (to_transformer_lens(model, i)(batch.tokens) for i in (0, 1))
    assert (a - b).abs().max() > 1e-2


@needs_lens
def test_each_transformer_lens_line_gets_its_own_model_class(trained):
    """4.x has no HookedTransformer: a TransformerBridge; the 3.x line: a HookedTransformer.
    CI runs this file under both lines."""
    from importlib.metadata import version

    major = int(version("transformer-lens").split(".")[0])
    tl = to_transformer_lens(trained["default"], 0)
    assert type(tl).__name__ == ("TransformerBridge" if major >= 4 else "HookedTransformer")


@needs_lens
def test_export_leaves_the_global_rng_alone(trained):
    state = torch.get_rng_state()
    to_transformer_lens(trained["default"], 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_state_dict_has_exact_tl_names_and_shapes(trained):
    model = trained["learned_pos+layernorm"]
    sd = tl_state_dict(model, 1)
    assert {k: tuple(v.shape) for k, v in sd.items()} == weight_shapes(model.cfg)
    assert sd["blocks.0.attn.W_Q"].shape == (4, 16, 4)
    assert sd["blocks.0.attn.W_O"].shape == (4, 4, 16)
    torch.testing.assert_close(sd["unembed.W_U"], model.weights["unembed.W_U"][1])


def test_without_positional_embedding_the_tl_table_is_zero(trained):
    model = trained["default"]
    sd = tl_state_dict(model, 0)
    assert sd["pos_embed.W_pos"].shape == (model.cfg.n_ctx, model.cfg.d_model)
    assert not sd["pos_embed.W_pos"].any()


def test_seed_index_out_of_range_is_a_clear_error(trained):
    with pytest.raises(ExportError, match="out of range"):
        tl_state_dict(trained["default"], 2)


def _load_by_hand(sd, config):
    """The loading recipe a TransformerLens user follows (export's docstring), per TL line."""
    try:
        from transformer_lens import TransformerBridge, TransformerBridgeConfig
        from transformer_lens.conversion_utils import convert_tl_checkpoint
    except ImportError:  # 3.x
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        tl = HookedTransformer(HookedTransformerConfig.from_dict(config))
        result = tl.load_state_dict(sd, strict=False)
        assert not result.unexpected_keys
        assert all(k.endswith((".mask", ".IGNORE")) for k in result.missing_keys)
        return tl
    cfg = TransformerBridgeConfig.from_dict(config)
    bridge = TransformerBridge.boot_native(cfg)
    bridge.load_state_dict(convert_tl_checkpoint(sd, cfg), strict=True)
    return bridge


@needs_lens
def test_save_writes_what_transformer_lens_loads_and_checks_it(run, tmp_path):
    done = save_transformer_lens(run, seed=1, out_dir=tmp_path / "tl")
    assert done.seed == 1 and done.max_logit_error <= 1e-4
    sd = load_file(str(tmp_path / "tl" / STATE_DICT))
    assert sd["blocks.0.attn.W_K"].shape == (4, 16, 4)
    config = json.loads((tmp_path / "tl" / CONFIG).read_text())
    assert config["attn_only"] and config["n_layers"] == 1 and config["d_vocab_out"] == 5
    assert config["default_prepend_bos"] is False and config["normalization_type"] is None
    tl = _load_by_hand(sd, config)
    tokens = exhaustive(SMALL, tokens=True, max_len=5).tokens
    with torch.no_grad():
        torch.testing.assert_close(tl(tokens), done.tl_model(tokens))


def test_save_without_transformer_lens_writes_files_and_returns_no_model(run, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # makes `import` fail
    done = save_transformer_lens(run, out_dir=tmp_path / "tl")
    assert done.tl_model is None and done.seed == 0
    assert (tmp_path / "tl" / STATE_DICT).exists() and (tmp_path / "tl" / CONFIG).exists()


def test_without_transformer_lens_the_error_says_how_to_install(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)
    with pytest.raises(ExportError, match=r"pip install count01\[lens\]"):
        to_transformer_lens(trained["default"], 0)


def test_importing_count01_never_imports_transformer_lens():
    code = ("import sys, count01, count01.cli, count01.export; "
            "sys.exit('transformer_lens' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@needs_lens
def test_cli_export_writes_and_verifies(run, tmp_path, capsys):
    assert main(["export", str(run), "--seed", "1", "--to", "transformer-lens",
                 "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "loaded back as" in out and "match count01" in out
    assert (tmp_path / "x" / STATE_DICT).exists()


def test_cli_export_of_a_missing_seed_is_one_line(run, capsys):
    assert main(["export", str(run), "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no seed 9" in err and "0, 1" in err
