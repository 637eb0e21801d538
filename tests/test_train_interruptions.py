"""The training system under interruption: SIGKILL then resume (bitwise), SIGTERM, and the
non-finite guard. Runs go through the real CLI in subprocesses (helpers in `test_train.py`)."""

import signal
import time

import numpy as np

from flow_maps import checkpoints
from test_train import SMALL, cli, leaves, restore, wait_for_checkpoint


def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
  killed, straight = tmp_path / "killed", tmp_path / "straight"
  proc = cli(killed, *SMALL, "--config.train.num_steps=100000",
             "--config.train.checkpoint_every=10", wait=False)
  wait_for_checkpoint(killed, proc, minimum=10)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  latest = checkpoints.Checkpoints(str(killed)).latest_step()
  assert latest is not None and latest >= 10
  final = latest + 12
  r = cli(killed, *SMALL, f"--config.train.num_steps={final}", "--config.train.checkpoint_every=10")
  assert r.returncode == 0, r.stderr
  assert f"resuming at step {latest}" in r.stdout
  r = cli(straight, *SMALL, f"--config.train.num_steps={final}",
          "--config.train.checkpoint_every=10")
  assert r.returncode == 0, r.stderr
  overrides = [("model.width", 128), ("train.batch_size", 512)]
  a, b = restore(straight, overrides=overrides), restore(killed, overrides=overrides)
  assert int(a.step) == int(b.step) == final
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
  proc = cli(tmp_path, *SMALL, "--config.train.num_steps=100000",
             "--config.train.checkpoint_every=1000000", wait=False)
  # Wait until training runs (the first log line), then ask it to stop.
  deadline = time.time() + 120
  metrics = tmp_path / "metrics.jsonl"
  while not (metrics.exists() and metrics.read_text().strip()):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert "Traceback" not in err
  latest = checkpoints.Checkpoints(str(tmp_path)).latest_step()
  assert latest is not None and latest >= 5, out
  state = restore(tmp_path, overrides=[("model.width", 128), ("train.batch_size", 512)])
  assert int(state.step) == latest
  assert all(np.isfinite(x).all() for x in leaves(state))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  assert cli(tmp_path, "--config.train.num_steps=10").returncode == 0
  good = restore(tmp_path)
  # A learning rate of 1e30 sends the parameters to ~1e30, and the next loss overflows.
  r = cli(tmp_path, "--config.train.num_steps=40", "--config.optim.learning_rate=1e30",
          "--allow_config_change=optim.learning_rate")
  assert r.returncode == 1, r.stderr
  assert "non-finite loss at step" in r.stderr
  assert "loss=" in r.stderr  # the term is named
  assert "the last checkpoint (step 10) was verified intact" in r.stderr
  assert "Traceback" not in r.stderr
  ckpts = checkpoints.Checkpoints(str(tmp_path))
  assert ckpts.latest_step() == 10
  for x, y in zip(leaves(good), leaves(restore(tmp_path))):
    np.testing.assert_array_equal(x, y)

