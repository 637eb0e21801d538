"""Evaluating and sampling a workdir while its run is still training (`docs` README, "The
workdir"): every read gets one whole checkpoint, even while the trainer writes new ones and
deletes old ones (keep_checkpoints), and never reports a checkpoint the trainer removed as
damaged."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "checkerboard_lsd.py")


def test_sample_and_eval_read_whole_checkpoints_of_a_live_run(tmp_path, capfd):
  from flow_maps import config_defaults, train  # noqa: F401  (jax in this process)
  from flow_maps.evaluation import run_eval
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  workdir = tmp_path / "run"
  overrides = ["--config.train.num_steps=3000", "--config.train.checkpoint_every=5",
               "--config.train.keep_checkpoints=2", "--config.train.log_every=5"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen([sys.executable, "-m", "flow_maps.main", f"--config={CONFIG}:smoke",
                           f"--workdir={workdir}", *overrides], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not (workdir / "checkpoints").is_dir() or not any(
        name.isdigit() for name in os.listdir(workdir / "checkpoints")):
      assert proc.poll() is None, proc.stderr.read()
      assert time.time() < deadline, "no checkpoint within 2 minutes"
      time.sleep(0.2)
    config = module.get_config("smoke")
    config.train.num_steps, config.train.checkpoint_every = 3000, 5
    config.train.keep_checkpoints, config.train.log_every = 2, 5
    config.sample.num_samples, config.sample.sampling_steps = 16, (1,)
    steps_read = []
    for _ in range(4):
      assert proc.poll() is None, "the run ended before the reads: make it longer"
      out = run_eval.sample(config, str(workdir))
      steps_read.append(int(os.path.basename(out).split("_")[1]))
      assert np.all(np.isfinite(np.load(os.path.join(out, "n1.npy"))))
    assert steps_read == sorted(steps_read) and steps_read[-1] > steps_read[0], steps_read
  finally:
    proc.terminate()
    proc.wait(timeout=120)
  err = capfd.readouterr().err
  assert "checkpoint error" not in err and "falling back" not in err, err
