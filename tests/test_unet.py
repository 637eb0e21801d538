"""The two-time EDM2 UNet (`docs/method.md` §2, §4, §5): shapes, jvp derivatives, objectives, forced
weight normalisation, dropout, bfloat16 and the presets' parameter counts.

Compilation dominates on CPU (a loss gradient through the tiny UNet is ~12k HLO ops), so every
jitted function is compiled once, at XLA's lowest backend optimisation level, and reused.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flow_maps import flow_map as fm
from flow_maps import interpolants
from flow_maps import objectives
from flow_maps.networks import unet

SHAPE = (8, 8, 3)
BATCH = 8
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _compile(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def _module(**overrides):
  arch = unet.unet_preset("tiny") | dict(dropout=0.2) | overrides
  return unet.UNet(img_resolution=SHAPE[0], img_channels=SHAPE[2], sigma0=0.5, learn_weight=True,
                   **arch)


def _perturbed(params, seed=1):
  """Nonzero gains (all are 0 at init, which makes v = 0 and w = 0) and weights off the sphere."""
  rng = np.random.RandomState(seed)

  def fn(path, leaf):
    if path[-1].key == "weight":
      scale = rng.uniform(0.5, 2.0, size=leaf.shape[-1]).astype(np.float32)
      return leaf * scale
    return jnp.asarray(rng.uniform(0.5, 1.5), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fn, params)


@pytest.fixture(scope="module")
def module():
  return _module()


@pytest.fixture(scope="module")
def model(module):
  return fm.FlowMapModel(module)


@pytest.fixture(scope="module")
def params(module):
  return _perturbed(unet.init_params(module, seed=0))


@pytest.fixture(scope="module")
def inputs():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  s = jax.random.uniform(k1, (BATCH,))
  t = s + (1.0 - s) * jax.random.uniform(k2, (BATCH,))
  x = jax.random.normal(k3, (BATCH,) + SHAPE)
  return s, t, x


@pytest.fixture(scope="module")
def forward(model, params, inputs):
  """v_{s,t}(x) in eval mode, compiled once."""
  return _compile(lambda p, s, t, x: model.bind(p)(s, t, x), params, *inputs)


def test_magnitude_preserving_primitives():
  a, b = np.random.RandomState(0).randn(2, 4096, 64).astype(np.float32)
  rms = lambda y: float(jnp.sqrt(jnp.mean(jnp.square(y))))
  assert rms(unet.mp_sum(a, b, 0.3)) == pytest.approx(1.0, abs=0.02)
  assert rms(unet.mp_cat(a[:, :16], b, 0.5)) == pytest.approx(1.0, abs=0.02)
  assert rms(unet.mp_silu(a)) == pytest.approx(1.0, abs=0.02)
  assert rms(unet.MPFourier(256).apply({}, jnp.asarray(a[:, 0]))) == pytest.approx(1.0, abs=0.05)
  x = a.reshape(64, 8, 8, 64)
  np.testing.assert_allclose(unet.resample(x, "down")[0, 0, 0], x[0, :2, :2].mean((0, 1)), 1e-6)
  np.testing.assert_array_equal(unet.resample(x, "up")[0, :2, :2],
                                np.broadcast_to(x[0, 0, 0], (2, 2, 64)))


def test_initial_output_is_zero_and_tree_matches_flow_map_model_init(module, model, inputs,
                                                                     forward):
  s, t, x = inputs
  params = unet.init_params(module, seed=0)
  v = forward(params, s, t, x)
  assert v.shape == x.shape and v.dtype == jnp.float32
  np.testing.assert_array_equal(v, 0.0)  # out_gain = 0, as in EDM2
  # The release's head (the default) is a nonzero function of the times at start; the
  # zero_start head is 0 there.
  w = model.log_weight(params, s, t)
  assert bool(jnp.all(jnp.isfinite(w))) and float(jnp.std(w)) > 0.0
  zero_start = _module(log_weight_head="zero_start")
  np.testing.assert_array_equal(fm.FlowMapModel(zero_start).log_weight(
      unet.init_params(zero_start, seed=0), s, t), 0.0)
  # Same tree, shapes and dtypes as the flax initialiser (by shape evaluation only).
  reference = jax.eval_shape(model.init, jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes_and_dtypes(params, reference)


def test_output_shape_dtype_and_weight_shape(model, params, inputs, forward):
  s, t, x = inputs
  v = forward(params, s, t, x)
  assert v.shape == x.shape and v.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(v))) and float(jnp.std(v)) > 1e-2
  w = model.log_weight(params, s, t)
  chex.assert_shape(w, (BATCH,))
  chex.assert_tree_all_finite(w)
  with pytest.raises(ValueError, match="built for 8x8x3"):
    model.bind(params)(s, t, jnp.zeros((BATCH, 16, 16, 3)))


def test_jvps_match_central_finite_differences(model, params, inputs, forward):
  """d/dt X, d/ds X and grad_x X . dx (`flow_map.py`) against central differences, float32."""
  s, t, x = inputs
  dx = jax.random.normal(jax.random.key(5), x.shape)

  def derivatives(p, s, t, x, dx):
    v = model.bind(p)
    return (fm.flow_map_and_dt(v, s, t, x)[1], fm.flow_map_and_ds(v, s, t, x)[1],
            fm.flow_map_and_dx(v, s, t, x, dx)[1])

  dX_dt, dX_ds, dX_dx = _compile(derivatives, params, s, t, x, dx)(params, s, t, x, dx)

  def X(s_, t_, x_):
    return x_ + (t_ - s_)[:, None, None, None] * forward(params, s_, t_, x_)

  h = 1e-3
  fd_t = (X(s, t + h, x) - X(s, t - h, x)) / (2 * h)
  fd_s = (X(s + h, t, x) - X(s - h, t, x)) / (2 * h)
  fd_x = (X(s, t, x + h * dx) - X(s, t, x - h * dx)) / (2 * h)
  for name, jvp, fd in [("t", dX_dt, fd_t), ("s", dX_ds, fd_s), ("x", dX_dx, fd_x)]:
    error = float(jnp.linalg.norm(jvp - fd) / jnp.linalg.norm(jvp))
    assert error < 2e-3, f"jvp in {name}: relative error {error:.2e}"
  # The time derivatives are not trivial: the map really depends on both times.
  assert float(jnp.linalg.norm(dX_ds + forward(params, s, t, x))) > 1e-3


def test_objectives_give_finite_loss_and_gradients():
  """LSD, ESD and PSD (`docs/method.md` §3) with the learned weight and dropout, in one compilation.

  The tiny UNet with no block beyond the resampling ones (num_blocks = 0: still two resolutions,
  down, up and attention) keeps the compilation of three loss gradients near 30 s of CPU.
  """
  module = _module(num_blocks=0)
  model = fm.FlowMapModel(module)
  params = _perturbed(unet.init_params(module, seed=0))
  x1 = jax.random.uniform(jax.random.key(2), (BATCH,) + SHAPE, minval=-1.0, maxval=1.0)
  interpolant = interpolants.linear(sigma0=0.5)
  names = ("lagrangian", "eulerian", "progressive")

  def losses(p, key):
    out = {}
    for name in names:
      objective = objectives.Objective(
          name, stop_gradient="full" if name == "eulerian" else "teacher", weighting="learned")
      (value, _), grads = jax.value_and_grad(objectives.loss, argnums=1, has_aux=True)(
          model, p, x1, key, objective=objective, interpolant=interpolant)
      out[name] = (value, grads)
    return out

  key = jax.random.key(3)
  results = _compile(losses, params, key)(params, key)
  for name in names:
    value, grads = results[name]
    leaves = jax.tree_util.tree_leaves(grads)
    assert bool(jnp.isfinite(value)), name
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves), name
    assert sum(float(jnp.sum(jnp.square(g))) for g in leaves) > 0.0, name
    # The weight head is trained too.
    assert float(jnp.sum(jnp.square(grads["weight_head"]["linear"]["weight"]))) > 0.0, name


def test_normalize_weights_puts_rows_on_the_sphere_and_is_idempotent(params, inputs, forward):
  normalize = jax.jit(unet.normalize_weights)  # as the train step calls it
  normalized = normalize(params)
  flat = dict(jax.tree_util.tree_flatten_with_path(normalized)[0])
  before = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  assert sum(path[-1].key == "weight" for path in flat) > 20
  for path, leaf in flat.items():
    leaf = np.asarray(leaf)
    if path[-1].key == "weight":
      fan_in = math.prod(leaf.shape[:-1])
      norms = np.linalg.norm(leaf.reshape(-1, leaf.shape[-1]), axis=0)
      np.testing.assert_allclose(norms, math.sqrt(fan_in), rtol=1e-3)  # EDM2: sqrt(fan_in)
      assert not np.allclose(before[path], leaf)  # the perturbed rows were off the sphere
    else:
      np.testing.assert_array_equal(leaf, before[path])  # gains untouched
  # EDM2's eps = 1e-4 in the norm makes one application land within eps / rms of the fixed point
  # and the next within O(eps^2): idempotent from then on, at float32 precision.
  twice = normalize(normalized)
  thrice = normalize(twice)
  for a, b, c in zip(*map(jax.tree_util.tree_leaves, (normalized, twice, thrice))):
    np.testing.assert_allclose(b, a, rtol=3e-4)
    np.testing.assert_allclose(c, b, rtol=1e-6)
  # Every forward pass normalises the weights itself, so the output ignores their scale (again up
  # to the eps, which the scale changes relative to).
  np.testing.assert_allclose(forward(normalized, *inputs), forward(params, *inputs),
                             rtol=1e-3, atol=1e-3)


def test_dropout_changes_outputs_in_train_mode_only(model, params, inputs, forward):
  s, t, x = inputs
  train = _compile(lambda p, k, s, t, x: model.bind(p, k)(s, t, x), params, jax.random.key(0),
                   s, t, x)
  a = train(params, jax.random.key(0), s, t, x)
  b = train(params, jax.random.key(1), s, t, x)
  a_again = train(params, jax.random.key(0), s, t, x)
  evaluation = forward(params, s, t, x)
  np.testing.assert_array_equal(a, a_again)  # the mask is a function of the key
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  assert float(jnp.max(jnp.abs(a - evaluation))) > 1e-3
  np.testing.assert_array_equal(evaluation, forward(params, s, t, x))  # eval is deterministic


def test_bfloat16_compute_keeps_float32_output_and_parameters(params, inputs, forward):
  s, t, x = inputs
  bf16 = fm.FlowMapModel(_module(compute_dtype=jnp.bfloat16))
  v = _compile(lambda p, s, t, x: bf16.bind(p)(s, t, x), params, s, t, x)(params, s, t, x)
  reference = forward(params, s, t, x)
  assert v.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
  error = float(jnp.linalg.norm(v - reference) / jnp.linalg.norm(reference))
  assert 0.0 < error < 5e-2, error


@pytest.mark.parametrize("preset, resolution", [("cifar10", 32), ("celeba64", 64)])
def test_preset_parameter_counts_match_the_paper(preset, resolution):
  """Within 1% of the published counts. The second time's embedding layer (cnoise x cemb) is what
  the two-time network adds to EDM2's unconditional UNet; the release's weight head adds 128."""
  module = unet.UNet(img_resolution=resolution, img_channels=3, learn_weight=True,
                     **unet.unet_preset(preset))
  count = unet.count_parameters(module)
  paper = unet.PAPER_PARAMETER_COUNTS[preset]
  assert abs(count - paper) / paper < 0.01, count
  arch = unet.unet_preset(preset)
  cnoise = arch["model_channels"] * arch["channel_mult"][0]
  cemb = arch["model_channels"] * max(arch["channel_mult"])
  edm2_unconditional = count - cnoise * cemb - 128
  # The paper's figure, rounded to 0.1 M, counts the second embedding: EDM2's does not reach it.
  assert round(count / 1e5) == round(paper / 1e5)
  assert round(edm2_unconditional / 1e5) != round(paper / 1e5)


def test_unet_from_config_resolves_preset_and_overrides():
  from flow_maps import config_defaults
  c = config_defaults.celeba64()
  module = unet.unet_from_config(c.model, (64, 64, 3), c.interpolant.sigma0,
                                 c.objective.weighting == "learned")
  assert module.model_channels == 128 and module.channel_mult == (1, 2, 3, 4)
  assert module.compute_dtype == jnp.bfloat16 and module.learn_weight and module.sigma0 == 0.5
  c = config_defaults.digits("smoke")
  module = unet.unet_from_config(c.model, (8, 8, 1), c.interpolant.sigma0)
  assert module.model_channels == c.model.model_channels
  with pytest.raises(ValueError, match="preset"):
    c.model.preset = "imagenet"
    unet.unet_from_config(c.model, (8, 8, 1), 0.5)


def _head_by_hand(params, s, t, kind):
  """The log-weight head written out: MPConv (unit-norm rows over sqrt(fan_in)) of the
  magnitude-preserving sum of sqrt(2) cos(2 pi (f x + p)) features of s and of the second time."""
  def features(x, seed):
    freqs, phases = unet._fourier_constants(128, seed)
    return np.sqrt(2.0) * np.cos(np.asarray(x)[:, None] * (unet.FOURIER_BANDWIDTH * freqs) + phases)
  second = t if kind == "release" else t - s
  emb = (features(s, 2) + features(second, 3)) / np.sqrt(2.0)
  w = np.asarray(params["weight_head"]["linear"]["weight"], np.float64)
  w = w / (1e-4 + np.linalg.norm(w, axis=0, keepdims=True) / np.sqrt(w.shape[0]))
  gain = float(params["weight_head"]["gain"]) if kind == "zero_start" else 1.0
  return gain * (emb @ w)[:, 0] / np.sqrt(w.shape[0])


@pytest.mark.parametrize("kind", unet.WEIGHT_HEADS)
def test_log_weight_heads_release_and_zero_start(kind):
  """The release's head (the default): times (s, t), no gain, nonzero at initialisation. The
  earlier zero_start head: times (s, t - s), a gain that is 0 at initialisation."""
  module = _module(log_weight_head=kind)
  params = unet.init_params(module, seed=0)
  assert set(params["weight_head"]) == ({"linear"} if kind == "release" else {"linear", "gain"})
  rng = np.random.RandomState(0)
  s = rng.uniform(0, 1, 16).astype(np.float32)
  t = rng.uniform(0, 1, 16).astype(np.float32)
  w0 = np.asarray(fm.FlowMapModel(module).log_weight(params, s, t))
  if kind == "release":
    assert np.std(w0) > 0.05  # a function of the times from the start, like the release's
  else:
    np.testing.assert_array_equal(w0, 0.0)
    params = jax.tree.map(lambda x: x, params)
    params["weight_head"]["gain"] = jnp.asarray(0.8, jnp.float32)
  w = np.asarray(fm.FlowMapModel(module).log_weight(params, s, t))
  np.testing.assert_allclose(w, _head_by_hand(params, s, t, kind), rtol=1e-4, atol=1e-5)
  assert unet.UNet.log_weight_head == "release"


def test_a_run_stored_before_the_weight_head_field_is_refused_by_name(tmp_path):
  """Runs stored before `model.log_weight_head` existed had the zero_start head: resuming one
  with today's default is refused naming the field, not restored into another head."""
  import json
  from flow_maps import config_defaults, validation, workdir
  config = config_defaults.digits("smoke")
  stored = workdir.config_as_json(config)
  del stored["model"]["log_weight_head"]
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(stored))
  with pytest.raises(validation.ConfigError, match="model.log_weight_head"):
    workdir.check_resume(str(tmp_path), config, ())
  config.model.log_weight_head = "zero_start"  # the head that run has, allowed by name
  changes = workdir.check_resume(str(tmp_path), config, ("model.log_weight_head",))
  assert [c.field for c in changes] == ["model.log_weight_head"]
