"""2-D toy datasets drawn in JAX from a key: the checkerboard and a ring of Gaussians.

`docs/method.md` §5-6. Every draw is a pure function of a key, so resuming a run or splitting a
batch over devices needs no pipeline state. `sample` and `log_density` are jitted (the dataset
and the sample count static). Each dataset knows its analytic density (for the
histogram KL of `evaluation/kl.py`) and a `domain` box [[x_lo, x_hi], [y_lo, y_hi]] for
histograms and plots. `evaluation/references.py` reads the structure (cells, means) to build the
exact velocity.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Domain = tuple[tuple[float, float], tuple[float, float]]


class Toy2D:
  """Interface: `sample(key, n) -> [n, 2]` (jittable, static n), `log_density`, `domain`;
  labelled: `num_classes`, `sample_labelled(key, n) -> ([n, 2], [n] int32)` with the same draws
  as `sample` (so `sample` is its first output, bitwise), and `label_of(x)`, the class whose
  region holds x (-1 outside every class's region)."""

  name: str
  dim = 2  # the dimension of a sample (`data.data_shape`); d-D mixtures override it

  @property
  def num_classes(self) -> int:
    raise NotImplementedError

  def sample(self, key: Array, n: int) -> Array:
    return self.sample_labelled(key, n)[0]

  def sample_labelled(self, key: Array, n: int) -> tuple[Array, Array]:
    raise NotImplementedError

  def label_of(self, x: Array) -> Array:
    raise NotImplementedError

  @property
  def domain(self) -> Domain:
    raise NotImplementedError

  def log_density(self, x: Array) -> Array:
    raise NotImplementedError

  def density(self, x: Array) -> Array:
    """p(x) for x of shape [..., 2]."""
    return jnp.exp(self.log_density(x))


@dataclasses.dataclass(frozen=True)
class Checkerboard(Toy2D):
  """Uniform on the "even" cells of a k x k grid over [-h, h]^2 (default 4 x 4 over [-1, 1]^2).

  Cell (i, j), i, j in 0..k-1, is the square [-h + i w, -h + (i + 1) w) x [-h + j w, -h + (j + 1) w)
  with side w = 2h / k (0.5 by default); it is even when i + j is even: 8 of the 16 cells,
  including the bottom-left one, (0, 0) = [-1, -0.5) x [-1, -0.5). The density is 1 / (8 w^2) = 0.5
  on them. Each coordinate is marginally uniform on [-h, h]: mean 0, std h / sqrt(3) = 0.577,
  the published sigma0 (`docs/method.md` §1).
  """

  cells_per_side: int = 4
  half_width: float = 1.0
  name: str = "checkerboard"

  @property
  def side(self) -> float:
    return 2 * self.half_width / self.cells_per_side

  @property
  def cells(self) -> tuple[np.ndarray, np.ndarray]:
    """(lows, highs), each [K, 2]: the corners of the even cells, in row-major (i, j) order."""
    k, w, h = self.cells_per_side, self.side, self.half_width
    ij = np.array([(i, j) for i in range(k) for j in range(k) if (i + j) % 2 == 0], np.float64)
    lows = -h + w * ij
    return lows, lows + w

  @property
  def domain(self) -> Domain:
    """The support itself, [-h, h]^2: with 200 bins the bin edges fall on the cell edges."""
    h = self.half_width
    return ((-h, h), (-h, h))

  @property
  def num_classes(self) -> int:
    """One class per even cell, numbered in the order of `cells`."""
    return self.cells[0].shape[0]

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def sample_labelled(self, key: Array, n: int) -> tuple[Array, Array]:
    lows, _ = self.cells
    cell_key, pos_key = jax.random.split(key)
    cell = jax.random.randint(cell_key, (n,), 0, lows.shape[0])
    x = jnp.asarray(lows)[cell] + self.side * jax.random.uniform(pos_key, (n, 2))
    return x, cell.astype(jnp.int32)

  def label_of(self, x: Array) -> Array:
    """The even cell holding x, as its class (-1 in an odd cell or outside the grid)."""
    k = self.cells_per_side
    ij = self.cell_index(x)
    # Even cells in row-major (i, j) order: cell (i, j) is number (i k + j) // 2.
    number = (ij[..., 0] * k + ij[..., 1]) // 2
    return jnp.where(self.in_support(x), number, -1).astype(jnp.int32)

  def cell_index(self, x: Array) -> Array:
    """(i, j) of the grid cell holding x ([..., 2] -> [..., 2] int); outside the grid: -1 or k."""
    ij = jnp.floor((jnp.asarray(x) + self.half_width) / self.side)
    return jnp.clip(ij, -1, self.cells_per_side).astype(jnp.int32)

  def in_support(self, x: Array) -> Array:
    """True where x lies in an even cell."""
    ij = self.cell_index(x)
    inside = jnp.all((ij >= 0) & (ij < self.cells_per_side), axis=-1)
    return inside & (jnp.sum(ij, axis=-1) % 2 == 0)

  @functools.partial(jax.jit, static_argnums=0)
  def log_density(self, x: Array) -> Array:
    """log p(x) for x [..., 2]: log(1 / (K w^2)) on the even cells, -inf elsewhere."""
    num_cells = self.cells[0].shape[0]
    log_p = -math.log(num_cells * self.side**2)
    return jnp.where(self.in_support(x), log_p, -jnp.inf)


class IsotropicMixture(Toy2D):
  """Equal-weight mixture of isotropic Gaussians N(mu_k, std^2 I) in any dimension: the one
  implementation of sampling, labels and density behind `GaussianMixture` (2-D, a ring) and
  `mixture_nd.MixtureND` (d-D, a simplex). A subclass gives `means` [K, dim] and `std`;
  `evaluation/references.py` reads both for the exact velocity (`docs/method.md` §7)."""

  num_components: int
  std: float

  @property
  def means(self) -> np.ndarray:
    raise NotImplementedError

  @property
  def log_weights(self) -> np.ndarray:
    """[K]: log pi_k, all equal."""
    return np.full((self.num_components,), -math.log(self.num_components))

  @property
  def num_classes(self) -> int:
    """One class per component."""
    return self.num_components

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def sample_labelled(self, key: Array, n: int) -> tuple[Array, Array]:
    comp_key, noise_key = jax.random.split(key)
    comp = jax.random.randint(comp_key, (n,), 0, self.num_components)
    x = jnp.asarray(self.means)[comp] + self.std * jax.random.normal(noise_key, (n, self.dim))
    return x, comp.astype(jnp.int32)

  def label_of(self, x: Array) -> Array:
    """The component whose mean is nearest x (the mode of its class)."""
    x = jnp.asarray(x)
    sq = jnp.sum((x[..., None, :] - jnp.asarray(self.means, x.dtype))**2, axis=-1)
    return jnp.argmin(sq, axis=-1).astype(jnp.int32)

  @functools.partial(jax.jit, static_argnums=0)
  def log_density(self, x: Array) -> Array:
    """log p(x) = logsumexp_k [log pi_k + log N(x; mu_k, std^2 I)] for x [..., d]."""
    x = jnp.asarray(x)
    sq = jnp.sum((x[..., None, :] - jnp.asarray(self.means, x.dtype))**2, axis=-1)
    log_n = -sq / (2 * self.std**2) - (self.dim / 2) * math.log(2 * math.pi * self.std**2)
    return jax.scipy.special.logsumexp(log_n + jnp.asarray(self.log_weights, x.dtype), axis=-1)


@dataclasses.dataclass(frozen=True)
class GaussianMixture(IsotropicMixture):
  """Equal-weight mixture of isotropic Gaussians N(mu_k, std^2 I), mu_k evenly on a circle.

  mu_k = radius (cos(2 pi k / K), sin(2 pi k / K)), k = 0..K-1; defaults K = 8, radius 1,
  std 0.1. With one component this is the Gaussian N((radius, 0), std^2 I).
  """

  num_components: int = 8
  radius: float = 1.0
  std: float = 0.1
  name: str = "gaussian_mixture"

  @property
  def means(self) -> np.ndarray:
    """[K, 2]."""
    angle = 2 * np.pi * np.arange(self.num_components) / self.num_components
    return self.radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)

  @property
  def domain(self) -> Domain:
    """[-r, r]^2 with r = radius + 5 std ([-1.5, 1.5]^2 by default): mass outside below 1e-6."""
    r = self.radius + 5 * self.std
    return ((-r, r), (-r, r))


TOY_DATASETS = {"checkerboard": Checkerboard, "gaussian_mixture": GaussianMixture}


def get_toy_dataset(name: str, **params) -> Toy2D:
  """The dataset `name` ("checkerboard" | "gaussian_mixture") with its parameters."""
  if name not in TOY_DATASETS:
    raise ValueError(f"unknown toy dataset {name!r}; allowed: {sorted(TOY_DATASETS)}")
  return TOY_DATASETS[name](**params)
