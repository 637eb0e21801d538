"""Inception statistics of a dataset's training split, the reference for FID.

  python experiments/fid_reference_stats.py --config=configs/cifar10_lsd.py --out=stats/cifar10.npz

It also stores the floor: the FID of eval.num_samples of the training images against all of
them, what a perfect sampler would score at that sample size. Then evaluate with
`--config.eval.fid_stats=stats/cifar10.npz`. Needs the converted Inception weights (experiments/convert_fid_inception.py) and the dataset prepared for tfds (or an offline
set). Nothing is downloaded.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (its data section).")
_OUT = flags.DEFINE_string("out", None, "Where to write the .npz (mu, sigma, count, floor).")
_FLOOR = flags.DEFINE_integer(
    "floor_count", None, "Training images in the FID floor (default: the config's "
    "eval.num_samples; an evaluation reports the floor only for its own sample count).")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  del argv
  from flow_maps.evaluation import image_eval
  stats = image_eval.reference_stats(_CONFIG.value, _OUT.value, floor_count=_FLOOR.value)
  print(f"{_CONFIG.value.data.name}: {stats.count} training images -> {_OUT.value}; FID of "
        f"{stats.floor_count} of them against all (the floor): {stats.floor:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
