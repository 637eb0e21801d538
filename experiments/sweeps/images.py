"""The image FID tables of `docs/method.md` §6: objectives × seeds on CIFAR-10 or CelebA-64.

`experiments/sweeps/images.py` (or `:cifar10`) runs CIFAR-10, `:celeba` CelebA-64; each member is
one thin config file (`configs/<dataset>_<objective>.py`) with its seed. ESD is included although
the paper found it unstable on images: that finding is part of the reproduction. Every member is
a 400k-step run on its own accelerator slice (see `docs/sweeps.md`); select a subset by index.
"""

from flow_maps import sweeps

DATASETS = {"cifar10": "cifar10", "celeba": "celeba"}
OBJECTIVES = ("lsd", "psd_m", "psd_u", "esd")
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
  dataset = arg or "cifar10"
  if dataset not in DATASETS:
    raise ValueError(f"images sweep: unknown dataset {dataset!r}; allowed: {sorted(DATASETS)}")
  prefix = DATASETS[dataset]
  return sweeps.Sweep(
      config=f"configs/{prefix}_lsd.py",
      members=sweeps.product(
          sweeps.axis("config", [f"configs/{prefix}_{name}.py" for name in OBJECTIVES]),
          sweeps.axis("seed", SEEDS)),
      mode="train_and_eval",
      name=f"images_{dataset}",
  )
