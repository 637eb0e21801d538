"""Data sources.

Two kinds, one per family, behind one interface (`sources.BatchSource`, built by
`batch_source`), so the train step and the loop do not ask which:
  - toy data (2-D: `toy2d.py`; a d-D Gaussian mixture: `mixture_nd.py`) is drawn in JAX from
    the step's key inside the train step, so a resumed or multi-device run needs no pipeline
    state at all;
  - images (`images.py`) come from the host with random access by step, so the position a
    checkpoint records is the step itself.
"""

from __future__ import annotations

import functools

import ml_collections
from jax.sharding import NamedSharding

from flow_maps.data.sources import BatchSource, ImageSource, ToySource

TOY_2D = ("checkerboard", "gaussian_mixture")
TOY_DATASETS = TOY_2D + ("mixture_nd",)  # mixture_nd: d-D, `mixture_nd.py`
IMAGE_DATASETS = ("cifar10", "celeba64", "digits", "mnist5k")
DATASETS = TOY_DATASETS + IMAGE_DATASETS


# Fields of config.data that are not parameters of the data set itself.
NOT_DATASET_PARAMS = ("name", "conditional", "label_dropout", "workers")
# The data sets whose labels the pipeline carries (data.conditional); the image ones are those
# with `images.DatasetInfo.num_classes` > 0 (celeba64 has no class labels).
LABELLED = TOY_2D + ("cifar10", "digits", "mnist5k")


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The number of classes the network is conditioned on: 0 unless data.conditional. Images
  answer from their `DatasetInfo`, without loading any data."""
  if not config.data.get("conditional", False):
    return 0
  if is_toy(config):
    return toy_dataset(config).num_classes
  from flow_maps.data import images
  return images.dataset_info(config.data.name).num_classes


def is_toy(config: ml_collections.ConfigDict) -> bool:
  return config.data.name in TOY_DATASETS


def toy_dataset(config: ml_collections.ConfigDict):
  from flow_maps.data import toy2d
  params = {k: v for k, v in config.data.items() if k not in NOT_DATASET_PARAMS}
  if config.data.name == "mixture_nd":
    from flow_maps.data import mixture_nd
    return mixture_nd.MixtureND(**params)
  return toy2d.get_toy_dataset(config.data.name, **params)


def image_dataset(config: ml_collections.ConfigDict, split: str = "train"):
  from flow_maps.data import images
  return images.get_image_dataset(config.data.name, split, data_dir=config.data.get("data_dir"),
                                  seed=config.seed)


def batch_source(config: ml_collections.ConfigDict, sharding: NamedSharding) -> BatchSource:
  """The train step's data for `config`: global batches of train.batch_size, split along
  `sharding` (the mesh's data axis); labelled if data.conditional. Loads no data (an image
  source opens its dataset when its batches are asked for)."""
  labelled = bool(config.data.get("conditional", False))
  batch_size = config.train.batch_size
  if is_toy(config):
    return ToySource(toy_dataset(config), batch_size, labelled)
  return ImageSource(functools.partial(image_dataset, config, "train"), batch_size,
                     data_shape(config), sharding, labelled, config.data.get("workers", 0))


def data_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one sample, without loading any data."""
  if is_toy(config):
    return (toy_dataset(config).dim,)
  from flow_maps.data import images
  return tuple(images.dataset_info(config.data.name).shape)
