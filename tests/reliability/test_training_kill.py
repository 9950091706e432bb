"""A fine-tune killed hard (SIGKILL) loses at most the steps since its last periodic checkpoint,
and the resumed run ends bit-identical to one never interrupted; SIGTERM saves like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import write_pair_files
from napari_fusionmamba.registry import load_checkpoint

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")

#: A run of 12 steps that checkpoints every 3; ``KILL_AT`` makes it signal itself after that step.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from napari_fusionmamba.training import Pair, TrainSettings, finetune

    run, kill_at, sig, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "resume"
    settings = TrainSettings(steps=12, crop=32, batch=2, lr=1e-3, warmup=3, val_every=4, base="tiny",
                             device="cpu", checkpoint_every_steps=3)

    def on_step(info):
        if info.step == kill_at:
            os.kill(os.getpid(), sig)

    pairs = None if resume else [Pair(sys.argv[5], sys.argv[6])]
    finetune(pairs, None if resume else settings, run, resume=resume, on_step=on_step)
    """
)


def _train(run, kill_at, sig, *rest):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", SCRIPT, str(run), str(kill_at), str(int(sig)), *rest]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def pair_files(tmp_path):
    return write_pair_files(tmp_path, 96)


def _weights(run):
    model, meta = load_checkpoint(run / "last.safetensors")
    return {k: v.numpy() for k, v in model.state_dict().items()}, meta["step"]


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_a_checkpoint_and_resumes_bit_identically(tmp_path, pair_files):
    straight = _train(tmp_path / "straight", 0, signal.SIGKILL, "new", *pair_files)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _train(tmp_path / "killed", 8, signal.SIGKILL, "new", *pair_files)
    assert killed.returncode == -signal.SIGKILL
    assert _weights(tmp_path / "killed")[1] == 6  # the checkpoint of step 6 survived the kill
    resumed = _train(tmp_path / "killed", 0, signal.SIGKILL, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (done, step), (reference, ref_step) = _weights(tmp_path / "killed"), _weights(tmp_path / "straight")
    assert step == ref_step == 12
    assert all(np.array_equal(done[k], reference[k]) for k in reference)


def test_sigterm_saves_the_run_like_ctrl_c(tmp_path, pair_files):
    stopped = _train(tmp_path / "run", 5, signal.SIGTERM, "new", *pair_files)
    assert stopped.returncode != 0
    assert _weights(tmp_path / "run")[1] == 5
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
