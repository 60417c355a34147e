import json

import pytest
import torch
from safetensors.torch import save_file

from count01.config import Config
from count01.files import CheckpointError, write_json
from count01.model import Model
from count01.runs import load, load_tensors, save_tensors


@pytest.fixture
def run(tmp_path):
    cfg = Config(n_seeds=2)
    m = Model.init(cfg)
    write_json(tmp_path / "config.json", cfg.to_dict())
    save_tensors(tmp_path / "model.safetensors", m.weights, cfg, m.seeds)
    return tmp_path, m


def test_a_saved_model_loads_back_identically(run):
    path, m = run
    loaded = load(path)
    assert loaded.seeds == m.seeds
    for k, v in m.weights.items():
        assert torch.equal(loaded.weights[k], v)


def test_truncated_checkpoint_is_a_clear_error(run):
    path, _ = run
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load(path)


def test_missing_checkpoint_and_missing_run_are_clear_errors(run, tmp_path):
    path, _ = run
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no final weights"):
        load(path)
    with pytest.raises(CheckpointError, match="no such run"):
        load(tmp_path / "nowhere")


def test_foreign_safetensors_is_rejected(run):
    path, _ = run
    save_file({"x": torch.zeros(3)}, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not a count01 checkpoint"):
        load(path)


def test_a_config_that_does_not_match_the_weights_is_rejected(run):
    path, _ = run
    data = json.loads((path / "config.json").read_text())
    data["heads"] = 2
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not match"):
        load(path)


def test_renamed_weights_are_rejected(tmp_path):
    cfg = Config(n_seeds=1)
    m = Model.init(cfg)
    weights = dict(m.weights)
    weights["blocks.0.attn.W_Qx"] = weights.pop("blocks.0.attn.W_Q")
    save_tensors(tmp_path / "w.safetensors", weights, cfg, m.seeds)
    with pytest.raises(CheckpointError, match="names differ"):
        load_tensors(tmp_path / "w.safetensors", cfg)


def test_corrupted_config_json_is_a_clear_error(run):
    path, _ = run
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted JSON"):
        load(path)
