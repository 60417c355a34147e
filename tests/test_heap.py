"""count01.heap: freed memory stays with the process (no page faults for a tensor of the same
size again), and training's numbers do not depend on it. Each case runs in a fresh process: the
setting is process-wide."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

FAULTS = """
import json, resource, sys, torch
import count01.heap
if sys.argv[1] == "1":
    count01.heap.keep_freed_memory()
for _ in range(8):  # steady state: a few small blocks land after the first large ones
    x = torch.ones(16 << 20)  # 64 MB, above glibc's largest dynamic mmap threshold (32 MB)
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.ones(16 << 20)
    del x
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5))
"""

WEIGHTS = """
import hashlib, json, sys
from count01.config import Config
from count01.model import Model
from count01.train import Trainer
if sys.argv[1] == "0":  # glibc's defaults: the Trainer's call does nothing
    sys.modules["count01.train"].keep_freed_memory = lambda: None
cfg = Config(layers=2, d_mlp=16, heads=2, d_head=4, n_seeds=2, batch_size=64, steps=4)
trainer = Trainer(cfg, Model.init(cfg))
for step in range(cfg.steps):
    trainer.step(step)
print(json.dumps(hashlib.sha256(trainer.flat.numpy().tobytes()).hexdigest()))
"""


def run(script: str, keep: bool):
    out = subprocess.run([sys.executable, "-c", script, str(int(keep))], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def test_a_freed_tensor_is_reused_without_page_faults():
    default, kept = run(FAULTS, False), run(FAULTS, True)
    if default < 1_000:  # transparent huge pages "always": 2 MB pages, ~32 faults a block
        pytest.skip(f"{default:.0f} page faults a 64 MB block by default: huge pages")
    assert default > 10_000  # 16,384 pages of 4 kB faulted in again each time by default
    assert kept < default / 100


def test_training_gives_the_same_weights_with_and_without_it():
    assert run(WEIGHTS, False) == run(WEIGHTS, True)
