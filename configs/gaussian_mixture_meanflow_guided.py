"""Labelled eight-Gaussian ring (std 0.25, as `gaussian_mixture_lsd_guided.py`), MeanFlow with its
own classifier-free guidance (`docs/method.md` §9, `config_defaults.with_fixed_guidance`): one
scale built into the conditional-velocity target, omega dI + kappa sg b(.|c) +
(1 - omega - kappa) sg b(.|null) on labelled rows, so that the map (no w input) is the guided
flow's of scale omega / (1 - kappa) = 1.5 / 0.75 = 2 here.
Also `configs/gaussian_mixture.py:preset=meanflow,guidance=fixed`.
"""

from flow_maps import config_defaults as cd


def get_config(variant=None):
  return cd.with_fixed_guidance(cd.with_preset(cd.wide_gaussian_mixture(variant), "meanflow"))
