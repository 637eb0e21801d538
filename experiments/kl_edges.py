"""Where a 2-D run's KL comes from: the histogram KL of its N-step samples split between the band
along the edges of the data's support (the checkerboard's cells) and the rest, with the mass
the samples put off the support (`docs/recipe.md`, "Why one step stays behind").

Reads the samples that `--mode=sample` wrote (DIR/samples/step_<S>_<params>_n<n>/n<N>.npy, the
newest unless --samples names one) and the run's dataset from DIR/config.json:

  python -m flow_maps.main --config=configs/checkerboard_lsd.py:demo --workdir=runs/demo \\
      --mode=sample --config.sample.num_samples=100000
  python experiments/kl_edges.py runs/demo

Per N: KL (the evaluation's estimator, `evaluation/kl.py`), its part from the bins within
--width bins (x or y, corners included) of a bin without data mass, the part from the other
bins, and the fraction of samples outside the support; last, the same for as many exact data
samples (the estimator's floor).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from flow_maps import data as data_lib  # noqa: E402  (after the path set-up, for checkouts)
from flow_maps import workdir as workdir_lib  # noqa: E402
from flow_maps.evaluation import kl  # noqa: E402


def split_kl(samples: np.ndarray, dataset, bins: int, width: int) -> dict[str, float]:
  """KL of `samples` [n, 2], its edge-band and interior parts, and the mass off the support."""
  terms = kl.histogram_kl_per_bin(samples, dataset, bins)
  band = kl.support_edge_bins(dataset, width, bins)
  mass = kl.bin_mass(dataset, bins)
  counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1],
                                bins=kl.bin_edges(tuple(map(tuple, dataset.domain)), bins))
  off = 1.0 - counts[mass > 0].sum() / len(samples)
  return {"kl": float(terms.sum()), "edge_band": float(terms[band].sum()),
          "interior": float(terms[~band].sum()), "off_support": float(off)}


def newest_samples(workdir: str) -> str | None:
  """The samples directory of the latest step under DIR/samples, or None if there is none."""
  found = glob.glob(os.path.join(workdir, "samples", "step_*"))
  if not found:
    return None
  return max(found, key=lambda p: int(re.search(r"step_(\d+)", p).group(1)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdir", help="a finished 2-D run with samples")
  parser.add_argument("--samples", default=None, help="a samples directory (default: newest)")
  parser.add_argument("--width", type=int, default=3, help="the band's width in bins")
  parser.add_argument("--seed", type=int, default=0, help="for the exact samples of the floor")
  args = parser.parse_args(argv)
  stored = workdir_lib.stored_config(args.workdir)
  if stored is None:
    print(f"{args.workdir}: no config.json: not a run's workdir", file=sys.stderr)
    return 2
  config = ml_collections.ConfigDict(stored)
  if not data_lib.is_toy(config) or "kl_bins" not in config.eval:
    print(f"{args.workdir}: data {config.data.name!r} has no histogram KL", file=sys.stderr)
    return 2
  dataset = data_lib.toy_dataset(config)
  directory = args.samples or newest_samples(args.workdir)
  if directory is None:
    print(f"no samples under {args.workdir}/samples: write them with --mode=sample",
          file=sys.stderr)
    return 2
  files = sorted(glob.glob(os.path.join(directory, "n*.npy")),
                 key=lambda p: int(re.search(r"n(\d+)\.npy$", p).group(1)))
  if not files:
    print(f"{directory}: no n<N>.npy samples", file=sys.stderr)
    return 2
  bins = config.eval.kl_bins
  band_mass = kl.bin_mass(dataset, bins)[kl.support_edge_bins(dataset, args.width, bins)].sum()
  print(f"{directory}: {config.data.name}, {bins}^2 bins; the edge band ({args.width} bins) "
        f"holds {band_mass:.0%} of the data's mass")
  print(f"{'N':>6} {'KL':>8} {'edge band':>10} {'interior':>9} {'off support':>12}")
  rows = []
  for path in files:
    samples = np.load(path).astype(np.float64)
    rows.append((re.search(r"n(\d+)\.npy$", path).group(1), samples))
  exact = np.asarray(dataset.sample(jax.random.key(args.seed), len(rows[0][1])), np.float64)
  rows.append(("data", exact))  # the estimator's floor, split the same way
  for name, samples in rows:
    parts = split_kl(samples, dataset, bins, args.width)
    print(f"{name:>6} {parts['kl']:8.4f} {parts['edge_band']:10.4f} {parts['interior']:9.4f} "
          f"{parts['off_support']:12.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
