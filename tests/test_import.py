import json
import math
import pickle

import pandas as pd
import pytest
import torch
from conftest import listing, refused
from safetensors.torch import load_file, save_file

from count01.cli import main
from count01.config import Config
from count01.export import (
    CONFIG,
    STATE_DICT,
    ImportRefused,
    import_transformer_lens,
    save_transformer_lens,
)
from count01.files import saved_eval
from count01.language import BOS, EOS, ONE, TWO, ZERO, eval_set, exhaustive
from count01.measure.analysis import analyze
from count01.measure.metrics import head_table
from count01.runs import load, load_tensors
from count01.train import train

# the task of the hand-built model: strings up to 8, `long` up to 12, so n <= 12 everywhere
TASK = {"max_len": 8, "long_max_len": 12, "exhaustive_len": 6, "eval_size": 512}
N_MAX = 12
GAIN = 100.0


def counter_weights(n_ctx: int = N_MAX + 2) -> dict[str, torch.Tensor]:
    """A TransformerLens state dict, by hand, of a counter with a known mechanism: head 0 attends
    uniformly (W_Q = 0) and reads +1 from a `1`, -1 from a `0`, 0 from anything else, so its
    output at EOS is (n1 - n0) / (number of tokens); W_U turns that into logit(1) - logit(0) =
    GAIN (n1 - n0) / n_tokens - margin, which is > 0 exactly when n1 > n0 for every string of up to
    N_MAX digits (ties answer 0). Head 1 reads nothing. d_model 4: one direction per digit kind
    and EOS; BOS embeds as 0. HookedTransformer's buffers (mask, IGNORE) included, as 3.x saves."""
    d, H, e = 4, 2, 2
    W_E = torch.zeros(5, d)
    for t in (ZERO, ONE, TWO, EOS):
        W_E[t, t] = 1.0
    W_V = torch.zeros(H, d, e)
    W_V[0, ONE, 0], W_V[0, ZERO, 0] = 1.0, -1.0
    W_O = torch.zeros(H, e, d)
    W_O[0, 0, 2] = 1.0  # into the `2` direction, which W_U reads: a `2` token never writes at EOS
    W_U = torch.zeros(d, 5)
    W_U[2, ONE] = GAIN
    margin = GAIN * 0.5 / (N_MAX + 2)  # half the smallest winning margin 1 / (N_MAX + 2)
    b_U = torch.tensor([margin, 0.0, -1e3, -1e3, -1e3])  # ZERO, ONE, TWO, EOS, BOS
    A = "blocks.0.attn."
    return {"embed.W_E": W_E, "pos_embed.W_pos": torch.zeros(n_ctx, d),
            A + "W_Q": torch.zeros(H, d, e), A + "W_K": torch.randn(H, d, e), A + "W_V": W_V,
            A + "W_O": W_O, A + "b_Q": torch.zeros(H, e), A + "b_K": torch.zeros(H, e),
            A + "b_V": torch.zeros(H, e), A + "b_O": torch.zeros(d),
            A + "mask": torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril(),
            A + "IGNORE": torch.tensor(-math.inf),
            "unembed.W_U": W_U, "unembed.b_U": b_U}


def tl_cfg(**changes) -> dict:
    """A TransformerLens config by hand (HookedTransformerConfig field names)."""
    return {"d_model": 4, "d_head": 2, "n_heads": 2, "n_layers": 1, "n_ctx": N_MAX + 2,
            "d_vocab": 5, "d_vocab_out": 5, "attn_only": True, "normalization_type": None,
            "positional_embedding_type": "standard", "attention_dir": "causal",
            "act_fn": None, "model_name": "hand-built counter", "default_prepend_bos": False,
            "use_attn_scale": True, "eps": 1e-5} | changes


def write_checkpoint(d, sd, cfg, name=STATE_DICT):
    d.mkdir(parents=True, exist_ok=True)
    if name.endswith(".safetensors"):
        save_file(sd, str(d / name))
    else:
        torch.save(sd, d / name)
    (d / CONFIG).write_text(json.dumps(cfg))
    return d / name


@pytest.fixture
def hand(tmp_path):
    torch.manual_seed(0)
    return write_checkpoint(tmp_path / "tl", counter_weights(), tl_cfg())


def test_hand_built_counter_imports_and_counts(hand, tmp_path):
    model = import_transformer_lens(hand.parent, tmp_path / "run", overrides=TASK)
    cfg = model.cfg
    assert (cfg.heads, cfg.d_model, cfg.d_head_, cfg.pos_embed, cfg.layernorm) == (2, 4, 2, "none",
                                                                                False)
    assert cfg.n_seeds == 1 and cfg.max_len == 8 and cfg.long_max_len == N_MAX
    # the mechanism, computed by hand for one string: BOS 1 1 0 2 EOS -> head 0 reads (2-1)/6
    batch = exhaustive(cfg, tokens=True, max_len=4)
    row = [i for i, t in enumerate(batch.tokens.tolist()) if t[:6] == [BOS, ONE, ONE, ZERO, TWO,
                                                                         EOS]]
    logits = load(tmp_path / "run")(batch)[0]  # (B, 5)
    expected = GAIN * (2 - 1) / 6 - GAIN * 0.5 / (N_MAX + 2)
    assert logits[row[0], ONE] - logits[row[0], ZERO] == pytest.approx(expected, rel=1e-6)
    # it answers every string of every evaluation set right: the mechanism is what we built
    rows = saved_eval(tmp_path / "run")
    assert {r["set"] for r in rows} == {"iid", "hard", "exhaustive", "long", "noisy"}
    assert all(r["l_acc"] == 1.0 and r["valid"] == 1.0 for r in rows), rows
    heads = pd.DataFrame(head_table(model, sets=("hard",), fit=eval_set(cfg, "fit")))
    h0, h1 = heads[heads["head"] == 0].iloc[0], heads[heads["head"] == 1].iloc[0]
    assert h0["w01"] == pytest.approx(1.0) and h0["w02"] == pytest.approx(1.0)  # W_Q = 0
    assert h0["s_acc"] == 1.0 and h1["s_acc"] < 1.0  # head 1 writes nothing


def test_import_records_where_the_run_came_from(hand, tmp_path):
    import_transformer_lens(hand.parent, tmp_path / "run", overrides=TASK)
    origin = json.loads((tmp_path / "run" / "metrics.json").read_text())["imported"]
    assert origin["from"] == "transformer-lens"
    assert origin["state_dict"] == str(hand.resolve())
    assert origin["tl_config"] == str((hand.parent / CONFIG).resolve())
    assert any("IGNORE" in n for n in origin["notes"]) and any("mask" in n for n in origin["notes"])
    assert any("pos_embed none" in n for n in origin["notes"])
    _, meta = load_tensors(tmp_path / "run" / "model.safetensors")
    assert meta["imported"] == origin


def test_a_learned_position_table_sets_n_ctx(tmp_path):
    sd = counter_weights()
    sd["pos_embed.W_pos"] = torch.randn(N_MAX + 2, 4) * 0.1
    src = write_checkpoint(tmp_path / "tl", sd, tl_cfg())
    model = import_transformer_lens(src, tmp_path / "run", overrides={"max_len": 8,
                                                                      "exhaustive_len": 6})
    assert model.cfg.pos_embed == "learned" and model.cfg.n_ctx == N_MAX + 2
    assert torch.equal(model.weights["pos_embed.W_pos"][0], sd["pos_embed.W_pos"])
    sentence = import_transformer_lens(src, tmp_path / "sentence", overrides={
        "max_len": 8, "exhaustive_len": 6, "framing": "sentence"})  # ... EOS y EOS: 2 more
    assert sentence.cfg.n_ctx == N_MAX + 2 and sentence.cfg.long_max_len == N_MAX - 2


def test_pt_state_dict_imports_like_safetensors(tmp_path):
    torch.manual_seed(0)
    sd = counter_weights()
    a = import_transformer_lens(write_checkpoint(tmp_path / "a", sd, tl_cfg()),
                                tmp_path / "ra", overrides=TASK)
    b = import_transformer_lens(write_checkpoint(tmp_path / "b", sd, tl_cfg(), "model.pt"),
                                tmp_path / "rb", overrides=TASK)
    assert a.weights.keys() == b.weights.keys()
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_cli_import_writes_a_run_every_command_takes(hand, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["import", str(hand.parent), "--from", "transformer-lens", "--out", str(out),
                 "--max-len", "8", "--long-max-len", "12", "--exhaustive-len", "6",
                 "--eval-size", "512"]) == 0
    assert "imported from" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--sets", "hard"]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "0112"]) == 0
    answer = capsys.readouterr().out.splitlines()[-1].split()
    assert answer[:3] == ["0", "1", "1"]  # seed (none in the checkpoint: 0), answer, truth
    assert main(["intervene", str(out), "--w01", "1", "--w02", "1"]) == 0


# --- export, then import: the same model, the same analysis ----------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained 2-seed run (learned positions, so n_ctx matters) and its seed 1 exported."""
    root = tmp_path_factory.mktemp("roundtrip")
    cfg = Config(steps=120, n_seeds=2, batch_size=64, checkpoint_every=120, pos_embed="learned",
                 **TASK)
    train(cfg, root / "run", progress=False)
    save_transformer_lens(root / "run", seed=1, out_dir=root / "tl")
    return root


def test_export_then_import_gives_the_same_weights_and_config(exported, tmp_path):
    model = import_transformer_lens(exported / "tl", tmp_path / "run")
    original = load(exported / "run")
    assert model.cfg == original.cfg.replace(seed=1, n_seeds=1)
    assert model.seeds == [1]
    one = original.select(1)
    assert one.weights.keys() == model.weights.keys()
    for k in one.weights:
        assert torch.equal(one.weights[k], model.weights[k]), k
    # `count01 export` of the imported run writes the same files, byte for byte in the weights
    save_transformer_lens(tmp_path / "run", out_dir=tmp_path / "again")
    a, b = load_file(str(exported / "tl" / STATE_DICT)), load_file(str(tmp_path / "again" /
                                                                         STATE_DICT))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_three_noise_symbols_exports_and_imports_with_its_vocabulary(tmp_path):
    cfg = Config(steps=20, n_seeds=1, batch_size=64, checkpoint_every=20, noise_symbols=3, **TASK)
    train(cfg, tmp_path / "run", progress=False)
    save_transformer_lens(tmp_path / "run", out_dir=tmp_path / "tl")
    assert json.loads((tmp_path / "tl" / "tl_config.json").read_text())["d_vocab"] == 7
    model = import_transformer_lens(tmp_path / "tl", tmp_path / "back")
    assert model.cfg == cfg
    original = load(tmp_path / "run")
    for k in original.weights:
        assert torch.equal(original.weights[k], model.weights[k]), k


@pytest.mark.parametrize("layers, d_mlp", [(2, 0), (1, 6), (3, 6)])
def test_layers_and_an_mlp_export_and_import_with_their_weights(tmp_path, layers, d_mlp):
    cfg = Config(steps=10, n_seeds=1, batch_size=64, checkpoint_every=10, layers=layers,
                 d_mlp=d_mlp, pos_embed="learned", layernorm=True, **TASK)
    train(cfg, tmp_path / "run", progress=False)
    save_transformer_lens(tmp_path / "run", out_dir=tmp_path / "tl")
    tl = json.loads((tmp_path / "tl" / "tl_config.json").read_text())
    assert tl["n_layers"] == layers and tl["attn_only"] == (d_mlp == 0)
    assert (tl.get("d_mlp"), tl.get("act_fn")) == ((d_mlp, "gelu") if d_mlp else (None, None))
    model = import_transformer_lens(tmp_path / "tl", tmp_path / "back")
    assert model.cfg == cfg
    original = load(tmp_path / "run")
    assert original.weights.keys() == model.weights.keys()
    for k in original.weights:
        assert torch.equal(original.weights[k], model.weights[k]), k


def test_export_then_import_gives_the_same_analysis(exported, tmp_path):
    import_transformer_lens(exported / "tl", tmp_path / "run")
    for run in (exported / "run", tmp_path / "run"):
        analyze(run, grid_size=3, progress=False, figures=False)
    for table in ("model", "heads", "aggregation", "alpha", "value_swap", "minimal_heads",
                  "intervention"):
        # as written: every number to the last digit the CSV holds
        ours = pd.read_csv(exported / "run" / "analysis" / f"{table}.csv", dtype=str)
        ours = ours[ours["seed"] == "1"].reset_index(drop=True)
        theirs = pd.read_csv(tmp_path / "run" / "analysis" / f"{table}.csv", dtype=str)
        assert len(theirs) > 0
        pd.testing.assert_frame_equal(theirs, ours, check_exact=True, obj=table)
    # and the report says where the model came from instead of how count01 trained it
    assert main(["report", str(tmp_path / "run")]) == 0
    text = (tmp_path / "run" / "report.md").read_text()
    assert "Imported from TransformerLens" in text and "Trained with" not in text


# --- refusals: one line, exit 2, nothing written ----------------------------------------------

def _refuse_checkpoint(tmp_path, capsys, match, sd=None, cfg=None, name=STATE_DICT, args=()):
    src = write_checkpoint(tmp_path / "tl", counter_weights() if sd is None else sd,
                           tl_cfg() if cfg is None else cfg, name)
    err = refused(["import", src, "--out", tmp_path / "out", *args], capsys, match, tmp_path)
    assert not (tmp_path / "out").exists()
    return err


def _without(key):
    sd = counter_weights()
    del sd[key]
    return sd


def _with(**tensors):
    return counter_weights() | {k.replace("__", "."): v for k, v in tensors.items()}


@pytest.mark.parametrize("cfg, match", [
    (tl_cfg(d_vocab=11, d_vocab_out=11), "vocabulary size d_vocab 11"),
    (tl_cfg(d_vocab=6), "vocabulary size d_vocab 6"),  # out 5
    (tl_cfg(d_vocab=6, d_vocab_out=6), "embed.W_E has shape (5, 4), the TL config implies (6"),
    (tl_cfg(d_vocab_out=7), "d_vocab_out 7"),
    (tl_cfg(attn_only=False, d_mlp=16), "an MLP with act_fn None: count01's MLP is exact GELU"),
    (tl_cfg(attn_only=False, d_mlp=16, act_fn="relu"), "an MLP with act_fn 'relu'"),
    (tl_cfg(attn_only=False, d_mlp=16, act_fn="gelu_new"), "an MLP with act_fn 'gelu_new'"),
    (tl_cfg(attn_only=False, act_fn="gelu"), "an MLP with d_mlp None"),
    (tl_cfg(attn_only=False, d_mlp=16, act_fn="gelu", gated_mlp=True), "gated_mlp = True"),
    ({k: v for k, v in tl_cfg().items() if k != "attn_only"}, "an MLP with act_fn None"),
    (tl_cfg(n_layers=2), "missing blocks.1.attn.W_K"),
    (tl_cfg(n_layers=0), "n_layers 0"),
    (tl_cfg(positional_embedding_type="rotary"), "positional_embedding_type 'rotary'"),
    (tl_cfg(positional_embedding_type="shortformer"), "positional_embedding_type 'shortformer'"),
    (tl_cfg(normalization_type="RMS"), "normalization_type 'RMS'"),
    (tl_cfg(normalization_type="LNPre"), "normalization_type 'LNPre'"),
    ({k: v for k, v in tl_cfg().items() if k != "normalization_type"}, "missing"),  # TL: LN
    (tl_cfg(attention_dir="bidirectional"), "attention_dir = 'bidirectional'"),
    (tl_cfg(n_key_value_heads=1), "grouped-query attention"),
    (tl_cfg(attn_scale=1.0), "attn_scale 1.0"),
    (tl_cfg(output_logits_soft_cap=30.0), "output_logits_soft_cap"),
])
def test_unsupported_architectures_are_refused_by_name(tmp_path, capsys, cfg, match):
    _refuse_checkpoint(tmp_path, capsys, match, cfg=cfg)


@pytest.mark.parametrize("sd, match", [
    (_with(**{"blocks.0.mlp.W_in": torch.zeros(4, 16)}), "unexpected blocks.0.mlp.W_in"),
    (_with(**{"blocks.1.attn.W_Q": torch.zeros(2, 4, 2)}), "unexpected blocks.1.attn.W_Q"),
    (_without("unembed.W_U"), "missing unembed.W_U"),
    (_without("pos_embed.W_pos"), "missing weight pos_embed.W_pos"),
    (_with(**{"blocks.0.attn.W_extra": torch.zeros(2)}), "unexpected blocks.0.attn.W_extra"),
    (_with(**{"blocks.0.ln1.w": torch.ones(4), "blocks.0.ln1.b": torch.zeros(4)}),
     "unexpected blocks.0.ln1.b, blocks.0.ln1.w"),
    (_with(**{"blocks.0.attn.W_Q": torch.zeros(2, 4, 3)}), "blocks.0.attn.W_Q has shape (2, 4, 3)"),
    (_with(**{"embed.W_E": torch.full((5, 4), math.nan)}), "embed.W_E holds non-finite values"),
    (_with(**{"unembed.b_U": torch.tensor([0.0, math.inf, 0, 0, 0])}), "unembed.b_U holds non-f"),
    (_with(**{"embed.W_E": torch.zeros(5, 4, dtype=torch.float64)}), "torch.float64"),
    (_with(**{"blocks.0.attn.mask": torch.ones(14, 14, dtype=torch.bool)}), "causal mask"),
    (_with(**{"blocks.0.attn.IGNORE": torch.tensor(0.0)}), "IGNORE is [0.0]"),
    (_with(**{"pos_embed.W_pos": torch.zeros(10, 4)}), "pos_embed.W_pos has shape (10, 4)"),
])
def test_wrong_weights_are_refused_by_name(tmp_path, capsys, sd, match):
    _refuse_checkpoint(tmp_path, capsys, match, sd=sd)


def test_a_position_table_that_does_not_fit_the_task_is_refused(tmp_path, capsys):
    sd = _with(**{"pos_embed.W_pos": torch.randn(N_MAX + 2, 4)})
    _refuse_checkpoint(tmp_path, capsys, "long_max_len (12) must exceed max_len (32)", sd=sd)
    _refuse_checkpoint(tmp_path, capsys, "n_ctx 14 of the TL config differs from count01's n_ctx "
                       "22", sd=sd, args=["--max-len", "8", "--long-max-len", "20"])


class Foreign:
    pass


@pytest.mark.parametrize("write, match", [
    (lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}"), "corrupted or truncated"),
    (lambda p: p.write_bytes(b""), "corrupted or truncated"),
])
def test_corrupted_safetensors_are_refused(hand, tmp_path, capsys, write, match):
    write(hand)
    refused(["import", hand.parent, "--out", tmp_path / "out"], capsys, match, tmp_path)


def test_a_truncated_safetensors_file_is_refused(hand, tmp_path, capsys):
    hand.write_bytes(hand.read_bytes()[:-20])
    refused(["import", hand.parent, "--out", tmp_path / "out"], capsys, "corrupted or truncated",
            tmp_path)


@pytest.mark.parametrize("obj, match", [
    ({"model": counter_weights(), "step": 3}, "not a plain state dict"),
    ([torch.zeros(2)], "not a plain state dict"),
    (Foreign(), "not a weights-only PyTorch file"),
])
def test_a_pt_file_that_is_not_a_plain_state_dict_is_refused(tmp_path, capsys, obj, match):
    d = tmp_path / "tl"
    write_checkpoint(d, counter_weights(), tl_cfg())
    with open(d / "model.pt", "wb") as f:
        (torch.save(obj, f) if not isinstance(obj, Foreign) else pickle.dump(obj, f, protocol=2))
    refused(["import", d / "model.pt", "--out", tmp_path / "out"], capsys, match, tmp_path)


def test_a_pt_file_that_is_not_a_pickle_is_refused(tmp_path, capsys):
    d = tmp_path / "tl"
    write_checkpoint(d, counter_weights(), tl_cfg())
    (d / "model.pth").write_text("not a pickle\nat all\n")
    refused(["import", d / "model.pth", "--out", tmp_path / "out"], capsys,
            "not a weights-only PyTorch file", tmp_path)


@pytest.mark.parametrize("text, match", [
    ("[1, 2, 3]", "not a TransformerLens config (not a JSON object)"),
    ('{"model": "gpt2", "lr": 0.1}', "not a TransformerLens config: no integer d_model"),
    ('{"d_model": 4.5}', "no integer d_model"),
    ("{not json", "corrupted JSON"),
])
def test_a_foreign_config_is_refused(hand, tmp_path, capsys, text, match):
    (hand.parent / CONFIG).write_text(text)
    refused(["import", hand.parent, "--out", tmp_path / "out"], capsys, match, tmp_path)


def test_missing_inputs_are_refused(hand, tmp_path, capsys):
    refused(["import", tmp_path / "nowhere", "--out", tmp_path / "out"], capsys,
            "no such file or directory", tmp_path)
    refused(["import", tmp_path, "--out", tmp_path / "out"], capsys, f"holds no {STATE_DICT}",
            tmp_path)
    refused(["import", hand, "--tl-config", tmp_path / "none.json", "--out", tmp_path / "out"],
            capsys, "no TransformerLens config", tmp_path)
    (hand.parent / "w.bin").write_bytes(hand.read_bytes())
    refused(["import", hand.parent / "w.bin", "--out", tmp_path / "out"], capsys,
            "must be .safetensors, .pt or .pth", tmp_path)
    refused(["import", hand.parent, "--from", "onnx", "--out", tmp_path / "out"], capsys,
            "invalid choice", tmp_path)
    refused(["import", hand.parent], capsys, "--out", tmp_path)


def test_model_fields_come_from_the_checkpoint(hand, tmp_path, capsys):
    refused(["import", hand.parent, "--out", tmp_path / "out", "--heads", "4"], capsys,
            "--heads comes from the checkpoint", tmp_path)
    with pytest.raises(ImportRefused, match="d_model come"):
        import_transformer_lens(hand.parent, tmp_path / "out", overrides=TASK | {"d_model": 8})


def test_import_never_overwrites_a_run(hand, tmp_path, capsys):
    import_transformer_lens(hand.parent, tmp_path / "run", overrides=TASK)
    before = listing(tmp_path / "run")
    refused(["import", hand.parent, "--out", tmp_path / "run"], capsys, "already holds a run",
            tmp_path)
    assert listing(tmp_path / "run") == before
    (tmp_path / "file").write_text("x")
    refused(["import", hand.parent, "--out", tmp_path / "file"], capsys, "is a file", tmp_path)


# --- a real TransformerLens model (the 3.x line: HookedTransformer) ---------------------------

def _hooked_transformer():
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        pytest.skip("HookedTransformer not importable (TransformerLens 4.x or not installed)")
    return HookedTransformer, HookedTransformerConfig


@pytest.mark.parametrize("normalization, layers, d_mlp", [(None, 1, 0), ("LN", 1, 0),
                                                          ("LN", 2, 32), (None, 3, 8)])
def test_a_real_hooked_transformer_imports_with_its_logits(tmp_path, normalization, layers, d_mlp):
    HookedTransformer, HookedTransformerConfig = _hooked_transformer()
    from count01.export import eos_logits

    torch.manual_seed(1)
    config = HookedTransformerConfig(d_model=16, d_head=4, n_heads=4, n_layers=layers,
                                     n_ctx=N_MAX + 2, d_vocab=5, attn_only=not d_mlp,
                                     d_mlp=d_mlp or None, act_fn="gelu" if d_mlp else None,
                                     normalization_type=normalization,
                                     default_prepend_bos=False)
    tl = HookedTransformer(config).eval()
    src = tmp_path / "tl"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in tl.state_dict().items()},
              str(src / "model.safetensors"))
    (src / CONFIG).write_text(json.dumps(config.to_dict(), default=str))
    model = import_transformer_lens(src / "model.safetensors", tmp_path / "run",
                                    overrides={"max_len": 8, "exhaustive_len": 6})
    assert model.cfg.pos_embed == "learned" and model.cfg.layernorm == (normalization == "LN")
    assert (model.cfg.layers, model.cfg.d_mlp) == (layers, d_mlp)
    batch = exhaustive(model.cfg, tokens=True, max_len=6)
    with torch.no_grad():
        theirs = eos_logits(tl, batch.tokens, batch.eos_pos)
        ours = load(tmp_path / "run").run(batch, force_tokens=True).logits[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_two_layer_run_exported_then_imported_gives_the_same_analysis(tmp_path):
    """Two layers and an MLP: every table of `analyze` for seed 1 of a two-seed run is the
    table of that seed exported to TransformerLens and imported alone, to the last digit (the
    forwards through the later layers, the fitted alphas and the means do not depend on the
    seeds beside it)."""
    cfg = Config(steps=30, n_seeds=2, batch_size=64, checkpoint_every=30, layers=2, d_mlp=4,
                 heads=2, d_model=8, **TASK | {"eval_size": 96, "exhaustive_len": 4})
    train(cfg, tmp_path / "run", progress=False)
    save_transformer_lens(tmp_path / "run", seed=1, out_dir=tmp_path / "tl")
    import_transformer_lens(tmp_path / "tl", tmp_path / "back")
    for run in (tmp_path / "run", tmp_path / "back"):
        analyze(run, grid_size=3, progress=False, figures=False)
    for table in ("model", "heads", "aggregation", "alpha", "value_swap", "minimal_heads",
                  "intervention", "attention_examples"):
        ours = pd.read_csv(tmp_path / "run" / "analysis" / f"{table}.csv", dtype=str)
        ours = ours[ours["seed"] == "1"].reset_index(drop=True)
        theirs = pd.read_csv(tmp_path / "back" / "analysis" / f"{table}.csv", dtype=str)
        assert len(theirs) > 0
        if table in ("heads", "alpha", "intervention", "attention_examples"):
            assert set(theirs["layer"]) == {"0", "1"}, table
        pd.testing.assert_frame_equal(theirs, ours, check_exact=True, obj=table)
    assert main(["report", str(tmp_path / "back")]) == 0
