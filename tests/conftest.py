"""Shared test helpers: a Gaussian target with the closed-form flow of `docs/method.md` §7 and a small
MLP flow-map network.

Float64 tests build their arrays inside `with jax.enable_x64(True):` (the `x64` fixture; never the
global flag), so that modules sharing one pytest-xdist worker keep float32 defaults. The helpers
create arrays in whatever default float dtype is current, and draw them in numpy: on a busy
2-core machine every new jax.random shape costs a compile.
"""

from __future__ import annotations

import os
import tempfile

# Caches the code keeps across runs (the reference flow maps of 2-D evaluation) go to a fresh
# directory per test session, inherited by the CLI subprocesses of the tests.
os.environ.setdefault("FLOW_MAPS_CACHE", tempfile.mkdtemp(prefix="flow_maps_cache_"))

import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import flow_map as fm
from flow_maps import interpolants
from flow_maps.evaluation.gaussian import GaussianFlow
from flow_maps.networks.mlp import MLP

def gaussian_flow(interpolant_name: str = "linear", sigma0: float = 0.7, dim: int = 3,
                  seed: int = 0) -> GaussianFlow:
  """N(0, sigma0^2 I) -> N(mean, cov) with a non-zero mean and a non-diagonal covariance whose
  eigenvalues (0.2 to 2.0) differ from sigma0^2. Arrays take the current default float dtype."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  eigenvalues = np.linspace(0.2, 2.0, dim)
  cov = (q * eigenvalues) @ q.T
  cov = 0.5 * (cov + cov.T)
  mean = rng.normal(size=dim) + 0.5
  dtype = jnp.zeros(()).dtype
  return GaussianFlow(interpolant=interpolants.get_interpolant(interpolant_name, sigma0),
                      mean=jnp.asarray(mean, dtype), cov=jnp.asarray(cov, dtype))


def numpy_params(module, dim: int, seed: int):
  """Random parameters with a flow-map module's own structure, drawn in numpy: `jax.eval_shape`
  traces the flax init without compiling it (a real init compiles slowly on a busy 2-core
  machine). Kernels ~ N(0, 1 / fan_in), biases ~ N(0, 0.1^2), so no layer starts at zero."""
  shapes = jax.eval_shape(fm.FlowMapModel(module).init, jax.random.key(0), jnp.zeros((4, dim)))
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(shapes)
  drawn = [rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0]) if len(leaf.shape) == 2
           else 0.1 * rng.normal(size=leaf.shape) for leaf in leaves]
  return jax.tree.unflatten(treedef, drawn)


def mlp_model(dim: int = 3, width: int = 16, depth: int = 2, sigma0: float = 0.7,
              learn_weight: bool = False, seed: int = 0):
  """(FlowMapModel, params) of a small MLP; params take the current default float dtype."""
  module = MLP(out_dim=dim, width=width, depth=depth, sigma0=sigma0, learn_weight=learn_weight)
  params = numpy_params(module, dim, seed)
  dtype = jnp.zeros(()).dtype
  return fm.FlowMapModel(module), jax.tree.map(lambda p: jnp.asarray(p, dtype), params)


def random_times_below(seed: int, n: int):
  """(s, t) with 0 <= s < t <= 1, kept away from s = t so off-diagonal formulas are tested."""
  u = np.random.default_rng(seed).uniform(size=(2, n))
  s = np.minimum(u.min(0), 0.95)
  t = np.maximum(u.max(0), s + 0.05)
  dtype = jnp.zeros(()).dtype
  return jnp.asarray(s, dtype), jnp.asarray(t, dtype)


@pytest.fixture(scope="session")
def make_gaussian_flow():
  return gaussian_flow


@pytest.fixture(scope="session")
def make_mlp_model():
  return mlp_model


@pytest.fixture(scope="session")
def make_times_below():
  return random_times_below


@pytest.fixture(scope="session")
def make_numpy_params():
  return numpy_params


@pytest.fixture
def x64():
  """Float64 for one test only."""
  with jax.enable_x64(True):
    assert jnp.zeros(()).dtype == jnp.float64
    yield


def _no_network(*args, **kwargs):
  raise AssertionError("network access attempted")


def block_network(patch: pytest.MonkeyPatch) -> None:
  """Any attempt to open a network connection through `patch`'s lifetime fails the test."""
  patch.setattr(socket.socket, "connect", _no_network)
  patch.setattr(socket, "create_connection", _no_network)


@pytest.fixture
def offline(monkeypatch):
  block_network(monkeypatch)
