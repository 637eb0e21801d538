"""Nothing lost, nothing silent: bad input, faults and the workdir's own files, each through the
real CLI in a subprocess, asserting the exit code, a one-line message, no traceback, and the
workdir's state afterwards.

Bad input that is caught before jax is imported costs a fraction of a second per case; cases
that need a trained run share one smoke run (`trained`, module scope)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

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
    ("--config.optim.learning_rate=1e39", ["optim.learning_rate", "float32"]),
    ("--config.model.width=0", ["model.width: must be >= 1, got 0"]),
])
def test_values_the_device_cannot_hold_are_named(tmp_path, override, fragments):
  """Each costs a jax import (a few seconds): the rest of `validation` is tested in-process in
  `test_train.py` and below."""
  workdir = tmp_path / "run"
  assert_one_line_error(run_cli(SMOKE, override, workdir=workdir), "config error", *fragments)
  assert not workdir.exists()


@pytest.mark.parametrize("field, value, message", [
    ("seed", 2**40, "seed: must fit in int32"),
    ("train.num_steps", 2**31, "train.num_steps: must fit in int32"),
    ("model.depth", -1, "model.depth: must be >= 1, got -1"),
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


# --------------------------------------------------------------------------- one trained run

# A logging window (3) that checkpoints (every 7) cut in the middle: a resume must restore the
# window so that metrics.jsonl equals the uninterrupted run's line for line.
TRAIN = [SMOKE, "--config.train.log_every=3", "--config.train.checkpoint_every=7",
         "--config.train.num_steps=20"]


def tree_state(directory):
  """{relative path: bytes} of every file under `directory` (events files aside: TensorBoard's,
  named by time and host)."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if not name.startswith("events.out.tfevents"):
        with open(path, "rb") as f:
          out[rel] = f.read()
  return out


def metrics_without_timing(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  for r in records:
    r.pop("steps_per_sec")
  return records


def checkpoint_digest(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA")) as f:
    return json.load(f)["custom_metadata"]["digest"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One uninterrupted smoke run: checkpoints at 7, 14 and 20, logs every 3 steps."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  r = run_cli(*TRAIN, workdir=workdir)
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["14", "20", "7"]
  assert not (workdir / ".lock").exists()
  return workdir


@pytest.fixture
def copy_of(trained, tmp_path):
  def copy():
    target = tmp_path / f"copy{len(os.listdir(tmp_path))}"
    shutil.copytree(trained, target)
    return target
  return copy


def data_files(step_dir):
  files = [os.path.join(root, n) for root, _, names in os.walk(step_dir) for n in names
           if os.sep + "d" + os.sep in os.path.join(root, n)]
  return sorted(files, key=os.path.getsize)


def flip_a_byte(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))


def test_resume_with_a_different_meaning_is_refused_with_a_diff(copy_of):
  workdir = copy_of()
  before = tree_state(workdir)
  r = run_cli(*TRAIN, "--config.objective.stop_gradient=none", "--config.seed=3",
              "--config.train.num_steps=30", workdir=workdir)
  assert_one_line_error(
      r, f"config error: resuming {workdir} with a different config:",
      "objective.stop_gradient 'teacher' -> 'none'", "seed 0 -> 3",
      "pass --allow_config_change=objective.stop_gradient,seed to override")
  assert "train.num_steps" not in r.stderr  # may change: not part of the refusal
  assert tree_state(workdir) == before


def test_allow_config_change_names_must_be_fields(copy_of):
  workdir = copy_of()
  before = tree_state(workdir)
  r = run_cli(*TRAIN, "--allow_config_change=objective.stop_gradiant", workdir=workdir)
  assert_one_line_error(r, "config error", "objective.stop_gradiant",
                        "nearest: objective.stop_gradient")
  assert tree_state(workdir) == before


def test_eval_and_sample_refuse_another_network(copy_of):
  workdir = copy_of()
  before = tree_state(workdir)
  r = run_cli(SMOKE, "--mode=sample", "--config.model.width=32", workdir=workdir)
  assert_one_line_error(r, f"evaluating {workdir} with a different config: model.width 64 -> 32")
  r = run_cli(SMOKE, "--mode=eval", "--config.data.name=gaussian_mixture", workdir=workdir)
  assert_one_line_error(r, "data.name 'checkerboard' -> 'gaussian_mixture'")
  assert tree_state(workdir) == before
  empty = workdir.parent / "empty"
  assert_one_line_error(run_cli(SMOKE, "--mode=sample", workdir=empty), "no checkpoint in")
  assert not empty.exists()


def test_allowed_change_torn_metrics_line_and_stale_lock(copy_of, trained):
  """One resumed run: a change of meaning allowed by name, a change that may happen, a torn
  last line in metrics.jsonl and a lock left by a killed run."""
  workdir = copy_of()
  shutil.rmtree(workdir / "checkpoints" / "20")  # resume from 14, in the middle of a window
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 21, "loss": 0.9')  # a kill mid-write
  dead = subprocess.run(["true"])  # a pid that has exited
  (workdir / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 17,
                                             "start": "1"}))
  del dead
  r = run_cli(*TRAIN, "--config.train.eval_every=0", "--config.sample.num_samples=32",
              "--allow_config_change=objective.stop_gradient",
              "--config.objective.stop_gradient=none", workdir=workdir)
  assert r.returncode == 0, r.stderr
  assert "Traceback" not in r.stderr
  assert "replacing the stale lock" in r.stderr and "no longer running" in r.stderr
  assert "dropping the torn last line" in r.stderr
  assert "resuming at step 14" in r.stdout
  changes = [json.loads(l) for l in open(workdir / "config_changes.jsonl")]
  assert [(c["step"], c["field"], c["old"], c["new"], c["kind"]) for c in changes] == [
      (14, "objective.stop_gradient", "teacher", "none", "allowed"),
      (14, "sample.num_samples", 64, 32, "may_change")]
  stored = json.load(open(workdir / "config.json"))
  assert stored["objective"]["stop_gradient"] == "none" and stored["sample"]["num_samples"] == 32
  assert not (workdir / ".lock").exists()
  # Steps up to 14 are the original run's, line for line; the last line is whole again.
  got, want = metrics_without_timing(workdir), metrics_without_timing(trained)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert got[:4] == want[:4]  # steps 3, 6, 9, 12: before the checkpoint resumed from


def test_a_second_run_is_refused_while_the_first_holds_the_lock(copy_of):
  workdir = copy_of()
  before = tree_state(workdir)
  lock = open(workdir / ".lock", "w")
  fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  lock.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
  lock.flush()
  try:
    r = run_cli(*TRAIN, workdir=workdir)
  finally:
    lock.close()
  assert_one_line_error(r, f"is in use by another run: pid {os.getpid()} on host "
                           f"{socket.gethostname()}")
  after = tree_state(workdir)
  after.pop(".lock")
  before.pop(".lock", None)
  assert after == before


def test_corrupt_latest_checkpoint_falls_back_and_retrains_bitwise(copy_of, trained):
  workdir = copy_of()
  flip_a_byte(data_files(workdir / "checkpoints" / "20")[-1])
  r = run_cli(*TRAIN, workdir=workdir)
  assert r.returncode == 0, r.stderr
  assert "checkpoint error: step 20: file default/" in r.stderr
  assert "does not match its sha256" in r.stderr
  assert "falling back to the newest intact checkpoint, step 14" in r.stderr
  assert (workdir / "corrupt_checkpoints" / "20").is_dir()
  # Steps 15..20 retrained from 14: the same arrays, bit for bit, and the same metrics lines
  # (the window 13-15 spans the checkpoint).
  assert checkpoint_digest(workdir, 20) == checkpoint_digest(trained, 20)
  assert metrics_without_timing(workdir) == metrics_without_timing(trained)


def test_damaged_checkpoints_are_named_and_skipped_by_sample(copy_of):
  workdir = copy_of()
  truncated = data_files(workdir / "checkpoints" / "20")[-1]
  os.truncate(truncated, os.path.getsize(truncated) // 2)
  os.remove(data_files(workdir / "checkpoints" / "14")[0])
  r = run_cli(SMOKE, "--mode=sample", workdir=workdir)
  assert r.returncode == 0, r.stderr
  assert "Traceback" not in r.stderr
  assert f"checkpoint error: step 20: file {os.path.relpath(truncated, workdir / 'checkpoints' / '20')} " \
         "has" in r.stderr and "bytes," in r.stderr
  assert "checkpoint error: step 14: file default/" in r.stderr and "is missing" in r.stderr
  assert "falling back to the newest intact checkpoint, step 7 (steps 20, 14" in r.stderr
  assert "samples of step 7" in r.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["14", "20", "7"]  # sample moves nothing


def test_no_intact_checkpoint_is_a_named_error_and_changes_nothing(copy_of):
  workdir = copy_of()
  os.remove(workdir / "checkpoints" / "7" / "_CHECKPOINT_METADATA")  # incomplete
  flip_a_byte(data_files(workdir / "checkpoints" / "14")[-1])  # altered
  os.remove(workdir / "checkpoints" / "20" / "files.sha256")  # so that the arrays decide
  flip_a_byte(data_files(workdir / "checkpoints" / "20")[-1])
  before = tree_state(workdir)
  r = run_cli(*TRAIN, "--config.train.num_steps=30", workdir=workdir)
  assert r.returncode == 2, r.stderr
  assert "Traceback" not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("CorruptCheckpointError: no intact checkpoint in"), last
  assert "step 7: incomplete: _CHECKPOINT_METADATA is missing" in last
  assert "step 14: file default/" in last and "does not match its sha256" in last
  assert "step 20: " in last and ("does not match its digest" in last or "Orbax cannot read" in last)
  assert "Nothing was changed" in last
  assert tree_state(workdir) == before


# --------------------------------------------------------------------------- signals and pipes


def popen_cli(*args, workdir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, "-m", "flow_maps.main", *args, f"--workdir={workdir}"],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def test_signals_at_any_moment_and_a_closed_stdout(tmp_path, trained):
  # Early, during the imports (how far 0.3 or 1.5 s get depends on the machine's speed and
  # load): 143, one line; nothing written if it was still starting, else a run stopped cleanly.
  # On a loaded machine 0.3 s can come before the interpreter reaches our handlers: then the
  # default action ends it (-15), with nothing written either.
  starting_seen = 0
  for delay in (0.3, 1.5):
    early = tmp_path / f"early_{delay}"
    proc = popen_cli(*TRAIN, workdir=early)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == -signal.SIGTERM:
      # Before any of our code ran (the interpreter still starting: a loaded machine): the
      # default action, which writes nothing.
      assert not early.exists() and "Traceback" not in err, err
      continue
    assert proc.returncode == 143, err  # a crash (seen before the fix: SIGSEGV) fails here
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if "stopped by SIGTERM while starting" in err:
      starting_seen += 1
      assert not early.exists()
    else:
      assert "stopped by SIGTERM during train" in err, err
  print(f"{starting_seen} of 2 early signals arrived while starting")
  # At the start of training (the first step compiling): a checkpoint of the steps taken.
  run = tmp_path / "run"
  proc = popen_cli(*TRAIN, workdir=run)
  assert proc.stdout.readline().startswith("starting step 0 of 20")
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert "Traceback" not in err and "saved a checkpoint at step" in out
  stopped_at = int(re.search(r"saved a checkpoint at step (\d+)", out).group(1))
  assert 1 <= stopped_at < 20
  assert not (run / ".lock").exists()
  # Resume with stdout closed after the first line (`| head -1`): the run finishes, and its
  # metrics and final arrays equal the uninterrupted run's.
  proc = popen_cli(*TRAIN, workdir=run)
  assert proc.stdout.readline().startswith(f"resuming at step {stopped_at}")
  proc.stdout.close()
  proc.wait(timeout=300)
  err = proc.stderr.read()
  assert proc.returncode == 0, err
  assert "Traceback" not in err and "stdout was closed" in err
  assert metrics_without_timing(run) == metrics_without_timing(trained)
  assert checkpoint_digest(run, 20) == checkpoint_digest(trained, 20)
  # SIGINT during sample: 130, one line, the checkpoints untouched.
  before = tree_state(run / "checkpoints")
  proc = popen_cli(SMOKE, "--mode=sample", workdir=run)
  time.sleep(2.0)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode in (0, 130), err  # 0: it finished first (a fast machine)
  assert "Traceback" not in err
  assert tree_state(run / "checkpoints") == before


# --------------------------------------------------------------------------- failing saves

# The real CLI with Orbax's save patched to fail at step 14, as a full disk or a workdir replaced
# by a file would make it.
FAULTY_MAIN = """
import os, runpy, shutil, sys
from orbax.checkpoint import CheckpointManager
original = CheckpointManager.save
fault = sys.argv[1]
def save(self, step, *args, **kwargs):
  if step == 14:
    if fault == "disk_full":
      raise OSError(28, "No space left on device")
    shutil.rmtree(str(self.directory))
    open(str(self.directory), "w").close()  # the checkpoints directory is now a file
  return original(self, step, *args, **kwargs)
CheckpointManager.save = save
sys.argv = ["flow_maps.main"] + sys.argv[2:]
runpy.run_module("flow_maps.main", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("fault", ["disk_full", "replaced_by_a_file"])
def test_a_failed_save_stops_the_run_at_once(tmp_path, fault):
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, "-c", FAULTY_MAIN, fault, *TRAIN, f"--workdir={workdir}"],
                     env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr
  assert "Traceback" not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("CheckpointSaveError: cannot save the checkpoint at step 14"), last
  steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")]
  assert steps == [3, 6, 9, 12]  # nothing trained past the failed save was logged
  assert not (workdir / ".lock").exists()
  if fault == "disk_full":
    assert sorted(os.listdir(workdir / "checkpoints")) == ["7"]
