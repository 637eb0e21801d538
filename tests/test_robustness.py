"""Nothing lost, nothing silent: bad input, faults and the workdir's own files, each through the
real CLI in a subprocess, asserting the exit code, a one-line message, no traceback, and the
workdir's state afterwards.

Bad input that is caught before jax is imported costs a fraction of a second per case; cases
that need a trained run share one smoke run (`trained`, module scope)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "checkerboard_lsd.py")
SMOKE = f"--config={CONFIG}:smoke"


def run_cli(*args, workdir=None, timeout=300):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="3")
  argv = [sys.executable, "-m", "flow_maps.main", *args]
  if workdir is not None:
    argv.append(f"--workdir={workdir}")
  return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r, *fragments, code=2):
  """Exit `code`, exactly one line on stderr holding every fragment, no traceback."""
  assert r.returncode == code, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_config_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("configs")
  (d / "syntax.py").write_text("def get_config(:\n  pass\n")
  (d / "no_get_config.py").write_text("x = 1\n")
  (d / "raises.py").write_text("raise RuntimeError('boom')\n")
  (d / "returns_dict.py").write_text("def get_config():\n  return {'seed': 0}\n")
  return d


PRE_JAX_CASES = [  # (arguments, fragments of the one line); caught before jax is imported
    ([SMOKE, "--config.train.batch_szie=8"],
     ["config error", "no field 'train.batch_szie'", "nearest: train.batch_size"]),
    ([SMOKE, "--config.trian.batch_size=8"], ["no field 'trian.batch_size'", "train.batch_size"]),
    ([SMOKE, "--config.train.qqqqqq=8"], ["no field 'train.qqqqqq'", "fields of train:",
                                          "train.num_steps"]),
    ([SMOKE, "--config.train.batch_size=abc"],
     ["config error", "checkerboard_lsd.py:smoke", "train.batch_size=abc", "invalid literal"]),
    ([SMOKE, "--config.optim.learning_rate=fast"], ["optim.learning_rate=fast"]),
    ([f"--config={ROOT}/configs/nope.py"], ["configs/nope.py", "does not exist"]),
    ([f"--config={CONFIG}:nope"], ["checkerboard_lsd.py:nope", "unknown config variant 'nope'"]),
    ([f"--config={ROOT}/configs"], ["is a directory"]),
    (["--config="], ["--config is empty"]),
    ([SMOKE, "--mode=bogus"], ["flag error", "--mode=bogus", "train|eval|sample"]),
    ([SMOKE, "--no_such_flag=1"], ["flag error", "no_such_flag"]),
    ([SMOKE, "stray_argument"], ["flag error", "unexpected arguments: stray_argument"]),
]


@pytest.mark.parametrize("args, fragments", PRE_JAX_CASES)
def test_bad_command_lines_are_one_line_errors(tmp_path, args, fragments):
  workdir = tmp_path / "run"
  assert_one_line_error(run_cli(*args, workdir=workdir), *fragments)
  assert not workdir.exists()


@pytest.mark.parametrize("name, fragments", [
    ("syntax.py", ["syntax.py:1: syntax error"]),
    ("no_get_config.py", ["no_get_config.py", "defines no get_config()"]),
    ("raises.py", ["raises.py", "importing it failed: RuntimeError: boom"]),
    ("returns_dict.py", ["returns_dict.py", "returned dict"]),
])
def test_broken_config_files_are_named(tmp_path, bad_config_files, name, fragments):
  workdir = tmp_path / "run"
  r = run_cli(f"--config={bad_config_files / name}", workdir=workdir)
  assert_one_line_error(r, "config error", *fragments)
  assert not workdir.exists()


def test_missing_or_bad_workdir(tmp_path):
  assert_one_line_error(run_cli(SMOKE), "flag error", "--workdir")
  assert_one_line_error(run_cli(SMOKE, "--workdir="), "--workdir is empty")
  a_file = tmp_path / "file"
  a_file.write_text("not a directory")
  assert_one_line_error(run_cli(SMOKE, workdir=a_file), "exists and is not a directory")
  assert a_file.read_text() == "not a directory"


@pytest.mark.parametrize("override, fragments", [
    ("--config.train.batch_size=2147483648", ["train.batch_size", "int32"]),
    ("--config.train.num_steps=2147483648", ["train.num_steps", "int32"]),
    ("--config.optim.learning_rate=1e39", ["optim.learning_rate", "float32"]),
    ("--config.model.width=0", ["model.width: must be >= 1, got 0"]),
    ("--config.model.depth=-1", ["model.depth: must be >= 1, got -1"]),
])
def test_values_the_device_cannot_hold_are_named(tmp_path, override, fragments):
  """Each costs a jax import (a few seconds): the rest of `validation` is tested in-process in
  `test_train.py` and below."""
  workdir = tmp_path / "run"
  assert_one_line_error(run_cli(SMOKE, override, workdir=workdir), "config error", *fragments)
  assert not workdir.exists()


@pytest.mark.parametrize("field, value, message", [
    ("seed", 2**40, "seed: must fit in int32"),
    ("optim.learning_rate", 1e-50, "optim.learning_rate: must be > 0 in float32"),
    ("optim.clip_norm", 1e39, "optim.clip_norm: must be finite in float32"),
    ("train.ema_decays", (0.999999999,), "train.ema_decays: each decay must lie in (0, 1) in "
                                         "float32"),
    ("train.xla_optimization_level", -1, "train.xla_optimization_level: must be >= 0"),
    ("eval.kl_bins", 0, "eval.kl_bins: must be >= 1"),
])
def test_device_ranges_in_process(field, value, message):
  from flow_maps import config_defaults, validation
  config = config_defaults.checkerboard("smoke")
  section, name = field.split(".") if "." in field else (None, field)
  with config.unlocked():
    (config[section] if section else config)[name] = value
  with pytest.raises(validation.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validation.validate(config)


@pytest.mark.parametrize("field, value, message", [
    ("model.model_channels", 0, "model.model_channels: must be >= 1"),
    ("model.channel_mult", (2, 0), "model.channel_mult: must be a tuple of integers >= 1"),
    ("model.dropout", 1.0, "model.dropout: must be < 1"),
    ("model.preset", "huge", "model.preset: unknown value 'huge'"),
])
def test_unet_sizes_in_process(field, value, message):
  from flow_maps import config_defaults, validation
  config = config_defaults.digits("smoke")
  with config.unlocked():
    config.model[field.split(".")[1]] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config)
