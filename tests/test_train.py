"""The training system: one vs four devices, exact resume (clean stop and SIGKILL), SIGTERM,
the non-finite guard, and config errors. Runs go through the real CLI in subprocesses, so each
can have its own device count; parameters are compared by restoring the checkpoints here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flow_maps import checkpoints, config_defaults, train, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "checkerboard_lsd.py")
# A model large enough that a step takes a few milliseconds (so a run can be killed mid-way).
SMALL = ["--config.model.width=128", "--config.train.batch_size=512"]


def cli(workdir, *overrides, devices=1, mode="train", wait=True):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  args = [sys.executable, "-m", "flow_maps.main", f"--config={CONFIG}:smoke",
          f"--workdir={workdir}", f"--mode={mode}", *overrides]
  if not wait:
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def restore(workdir, step=None, overrides=()):
  config = config_defaults.checkerboard("smoke")
  for key, value in overrides:
    section, field = key.split(".")
    config[section][field] = value
  exp = train.build_experiment(config)
  return checkpoints.Checkpoints(str(workdir)).restore(train.init_state(exp), step)


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.ema, state.opt_state))]


def wait_for_checkpoint(workdir, proc, minimum=1, timeout=120):
  directory = os.path.join(workdir, "checkpoints")
  start = time.time()
  while time.time() - start < timeout:
    assert proc.poll() is None, proc.communicate()
    if os.path.isdir(directory):
      done = [int(d) for d in os.listdir(directory) if d.isdigit()]
      if done and max(done) >= minimum:
        return max(done)
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def test_four_devices_match_one(tmp_path):
  """Same global batch on 1 and 4 CPU devices: same loss, same updated parameters."""
  steps = ["--config.train.num_steps=6", "--config.train.log_every=1"]
  one, four = tmp_path / "one", tmp_path / "four"
  r1 = cli(one, *steps, devices=1)
  r4 = cli(four, *steps, devices=4)
  assert r1.returncode == 0, r1.stderr
  assert r4.returncode == 0, r4.stderr
  assert json.load(open(four / "run_info.json"))["devices"] == 4
  assert json.load(open(four / "run_info.json"))["per_device_batch"] == 64
  loss1 = [json.loads(l)["loss"] for l in open(one / "metrics.jsonl")]
  loss4 = [json.loads(l)["loss"] for l in open(four / "metrics.jsonl")]
  assert len(loss1) == 6
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  a, b = restore(one), restore(four)
  assert int(a.step) == int(b.step) == 6
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)
  # The parameters did move, so the comparison above is not between two initialisations.
  init = train.init_state(train.build_experiment(config_defaults.checkerboard("smoke")))
  assert any(not np.allclose(x, y) for x, y in zip(leaves(a), leaves(init)))


def test_resume_after_clean_stop_is_bitwise_exact(tmp_path):
  straight, split = tmp_path / "straight", tmp_path / "split"
  assert cli(straight, "--config.train.num_steps=16").returncode == 0
  assert cli(split, "--config.train.num_steps=8").returncode == 0
  r = cli(split, "--config.train.num_steps=16")
  assert r.returncode == 0, r.stderr
  assert "resuming at step 8" in r.stdout
  for x, y in zip(leaves(restore(straight)), leaves(restore(split))):
    np.testing.assert_array_equal(x, y)
  # metrics.jsonl holds each logged step once.
  steps = [json.loads(l)["step"] for l in open(split / "metrics.jsonl")]
  assert steps == sorted(set(steps)) and steps[-1] == 16


@pytest.mark.parametrize("field, value, message", [
    ("objective.residual", "lsdd", "objective.residual: unknown value 'lsdd'"),
    ("data.name", "imagenet", "data.name: unknown value 'imagenet'"),
    ("objective.diagonal_fraction", 1.5, "objective.diagonal_fraction: must be <= 1"),
    ("objective.diagonal_fraction", -0.1, "objective.diagonal_fraction: must be >= 0"),
    ("objective.stop_gradient", "half", "objective.stop_gradient: unknown value"),
    ("objective.psd_h", "beta", "objective.psd_h: unknown value"),
    ("objective.teacher", "ema_0.5", "objective.teacher: unknown value 'ema_0.5'"),
    ("interpolant.name", "cosine", "interpolant.name: unknown value"),
    ("interpolant.sigma0", 0.0, "interpolant.sigma0: must be > 0"),
    ("optim.name", "sgd", "optim.name: unknown value"),
    ("optim.learning_rate", float("nan"), "optim.learning_rate: must be finite"),
    ("train.num_steps", -1, "train.num_steps: must be >= 0"),
    ("train.batch_size", 250, "train.batch_size: the per-device batch 250"),
    ("train.ema_decays", (0.9, 1.0), "train.ema_decays: each decay must lie in (0, 1)"),
    ("eval.sampling_steps", (1, 0), "eval.sampling_steps: must be a non-empty tuple"),
    ("eval.ode_steps", (4, 0), "eval.ode_steps: must be a tuple of step counts >= 1"),
])
def test_bad_config_values_name_the_field(field, value, message):
  config = config_defaults.checkerboard("smoke")
  section, name = field.split(".")
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config)
  assert message in str(e.value)


def test_batch_not_divisible_by_devices():
  config = config_defaults.checkerboard("smoke")
  config.train.batch_size = 4 * 17 + 2
  with pytest.raises(validation.ConfigError, match="train.batch_size: the global batch 70 is not "
                     "divisible by the 4 devices"):
    validation.validate(config, num_devices=4)
  config.train.batch_size = 4 * 6  # 6 rows per device: not whole periods of 4 at eta = 0.75
  with pytest.raises(validation.ConfigError, match="multiple of 4"):
    validation.validate(config, num_devices=4)
  config.train.batch_size = 4 * 8
  validation.validate(config, num_devices=4)


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path):
  r = cli(tmp_path, "--config.objective.residual=lsdd")
  assert r.returncode == 2
  assert "config error: objective.residual: unknown value 'lsdd'" in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "checkpoints").exists()
