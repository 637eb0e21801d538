"""KL(data || model) for the 2-D datasets by a histogram of the model's samples (`docs/method.md` §6).

The paper reports checkerboard KLs but not its recipe. This one:

  1. Bin the n model samples in the dataset's `domain` with B x B equal bins (default B = 100:
     [-1, 1]^2 in bins of 0.02 for the checkerboard, 25 x 25 bins per cell, edges on the cell
     edges; [-1.5, 1.5]^2 in bins of 0.03 for the 8-Gaussian ring).
  2. Model density per bin, with a pseudo-count a (default 0.1) in every one of the B^2 bins:
       q_j = (c_j + a) / (n + a B^2) / |bin|.
     n counts every sample, so samples outside the domain (and non-finite ones) are lost mass:
     they lower q inside and raise the KL. The pseudo-count keeps q > 0 (a model that misses a
     region of the data has a large but finite KL); it is the same as mixing the histogram with
     a uniform density on the domain with weight a B^2 / (n + a B^2) (1% at n = 100k, B = 100).
  3. KL = sum_j [ int_bin p log p - (int_bin p) log q_j ], the integrals of the analytic density p
     by the midpoint rule on S x S points per bin (default S = 4). For the checkerboard p is
     constant on every bin, so this is exact. The mass of p outside the domain (under 1e-6 for
     both datasets) is left out.

The estimator is biased upwards by the sampling noise of the histogram: about (number of bins
where p > 0) / (2 n). `kl_noise_floor` measures it, with the same recipe on n exact data samples.
Measured at n = 100,000 (two seeds): checkerboard 0.031 at B = 100 and 0.145 at B = 200;
8-Gaussian ring 0.034 and 0.094. The reference map (`references.py`) pushed 100,000 noise samples
to 0.032 (B = 100) and 0.146 (B = 200) on the checkerboard, at the floor. The floor must be
reported beside every KL: the published values (0.068 to 0.15) are only comparable under the
same, unpublished, recipe, and B = 200 at n = 100k would put the floor above most of them.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from flow_maps.data.toy2d import Domain, Toy2D

DEFAULT_BINS = 100
DEFAULT_PSEUDO_COUNT = 0.1
DEFAULT_SUBGRID = 4


def bin_edges(domain: Domain, bins: int) -> tuple[np.ndarray, np.ndarray]:
  """The B + 1 edges along each axis of the domain."""
  return tuple(np.linspace(lo, hi, bins + 1) for lo, hi in domain)


@functools.lru_cache(maxsize=16)
def _density_integrals(dataset: Toy2D, domain: Domain, bins: int,
                       subgrid: int) -> tuple[np.ndarray, np.ndarray]:
  """(int_bin p, int_bin p log p), each [B, B], by the midpoint rule on subgrid^2 points a bin."""
  fine = [np.linspace(lo, hi, bins * subgrid + 1) for lo, hi in domain]
  mids = [(e[:-1] + e[1:]) / 2 for e in fine]
  cell_area = np.prod([e[1] - e[0] for e in fine])
  xx, yy = np.meshgrid(mids[0], mids[1], indexing="ij")
  points = np.stack([xx, yy], axis=-1)
  log_p = np.asarray(dataset.log_density(points), np.float64)
  p = np.exp(log_p)
  p_log_p = np.where(p > 0, p * np.where(p > 0, log_p, 0.0), 0.0)

  def per_bin(f):
    return f.reshape(bins, subgrid, bins, subgrid).sum(axis=(1, 3)) * cell_area

  return per_bin(p), per_bin(p_log_p)


def histogram_density(samples, domain: Domain, bins: int = DEFAULT_BINS,
                      pseudo_count: float = DEFAULT_PSEUDO_COUNT) -> np.ndarray:
  """q_j = (c_j + a) / (n + a B^2) / |bin| on the B x B bins, [B, B] (x index first)."""
  samples = np.asarray(samples, np.float64)
  n = samples.shape[0]
  counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=bin_edges(domain, bins))
  area = np.prod([(hi - lo) / bins for lo, hi in domain])
  return (counts + pseudo_count) / (n + pseudo_count * bins**2) / area


def histogram_kl_per_bin(samples, dataset: Toy2D, bins: int = DEFAULT_BINS,
                         pseudo_count: float = DEFAULT_PSEUDO_COUNT,
                         subgrid: int = DEFAULT_SUBGRID,
                         domain: Domain | None = None) -> np.ndarray:
  """Each bin's term int_bin p log p - (int_bin p) log q_j of `histogram_kl`, [B, B]: where the
  KL comes from (`support_edge_bins` splits it)."""
  domain = tuple(map(tuple, domain or dataset.domain))
  q = histogram_density(samples, domain, bins, pseudo_count)
  mass, p_log_p = _density_integrals(dataset, domain, bins, subgrid)
  return p_log_p - mass * np.log(q)


def histogram_kl(samples, dataset: Toy2D, bins: int = DEFAULT_BINS,
                 pseudo_count: float = DEFAULT_PSEUDO_COUNT, subgrid: int = DEFAULT_SUBGRID,
                 domain: Domain | None = None) -> float:
  """KL(p || q) with q the histogram density of `samples` [n, 2] (recipe in the module doc)."""
  return float(np.sum(histogram_kl_per_bin(samples, dataset, bins, pseudo_count, subgrid,
                                           domain)))


def bin_mass(dataset: Toy2D, bins: int = DEFAULT_BINS, subgrid: int = DEFAULT_SUBGRID,
             domain: Domain | None = None) -> np.ndarray:
  """int_bin p on the B x B bins, [B, B]."""
  return _density_integrals(dataset, tuple(map(tuple, domain or dataset.domain)), bins,
                            subgrid)[0]


def support_edge_bins(dataset: Toy2D, width: int, bins: int = DEFAULT_BINS,
                      subgrid: int = DEFAULT_SUBGRID, domain: Domain | None = None) -> np.ndarray:
  """[B, B] bool: the bins with data mass that lie within `width` bins (in x or y) of a bin
  without any, or of the domain's border: the band along the edges of the data's support
  (the checkerboard's cells), where a continuous map's samples thin out first."""
  mass = bin_mass(dataset, bins, subgrid, domain)
  empty = np.pad(mass <= 0, width, constant_values=True)
  near = np.zeros_like(mass, bool)
  for dx in range(-width, width + 1):
    for dy in range(-width, width + 1):
      near |= empty[width + dx:width + dx + bins, width + dy:width + dy + bins]
  return near & (mass > 0)


def kl_noise_floor(dataset: Toy2D, num_samples: int, key: jax.Array, bins: int = DEFAULT_BINS,
                   pseudo_count: float = DEFAULT_PSEUDO_COUNT, subgrid: int = DEFAULT_SUBGRID,
                   domain: Domain | None = None) -> float:
  """`histogram_kl` of `num_samples` exact data samples drawn with `key`: the estimator's floor."""
  samples = dataset.sample(key, num_samples)
  return histogram_kl(samples, dataset, bins, pseudo_count, subgrid, domain)
