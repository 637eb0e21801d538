"""Stand-in tfds datasets, for tests and benchmarks on a machine without the real data.

`write_stand_in_tfds` prepares a tfds directory holding `name` ("cifar10", "celeb_a") written by
the real builder's class with only its example generator replaced: the records, their encoding
(PNG, JPEG), the file format and the reading path (`images.py`) are the real ones, and nothing
is downloaded. Building needs TensorFlow (the `tfds-build` extra); reading does not.
"""

from __future__ import annotations

from typing import Any, Callable


def write_stand_in_tfds(data_dir: str, name: str, splits: dict[str, int],
                        example: Callable[[str, int, Any], dict],
                        file_format: str = "array_record") -> None:
  """Prepares tfds `name` in `data_dir` with `splits` {split: count} examples, example i of a
  split being `example(split, i, features)` (a feature dict; `features` is the builder's
  `info.features`), keyed "<split><i>"."""
  import tensorflow_datasets as tfds

  class StandIn(tfds.builder_cls(name), skip_registration=True):
    # No checksums file to look for: the builder is defined here, not in tfds' tree (tfds would
    # otherwise resolve this module's package path through importlib_resources).
    code_path = None

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._examples(split, n) for split, n in splits.items()}

    def _examples(self, split, n):
      features = self.info.features
      for i in range(n):
        yield f"{split}{i}", example(split, i, features)

  StandIn.name = name
  StandIn(data_dir=data_dir, file_format=file_format).download_and_prepare()
