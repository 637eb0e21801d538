"""Labelled eight-Gaussian ring (std 0.25, as `gaussian_mixture_lsd_guided.py`), MeanFlow with its
own classifier-free guidance (`docs/method.md` §9): one scale built into the conditional-velocity
target, omega dI + kappa sg b(.|c) + (1 - omega - kappa) sg b(.|null) on labelled rows, so that
the map (no w input) is the guided flow's of scale omega / (1 - kappa) = 2 here."""

from flow_maps import config_defaults


def get_config(variant=None):
  c = config_defaults.with_preset(config_defaults.gaussian_mixture(variant), "meanflow")
  c.data.std = 0.25
  c.interpolant.sigma0 = 0.75
  c.data.conditional = True
  c.data.label_dropout = 0.1
  c.guidance.fixed_omega = 1.5
  c.guidance.fixed_kappa = 0.25  # effective scale 1.5 / (1 - 0.25) = 2
  c.eval.guidance = (2.0,)
  c.sample.guidance = (2.0,)
  return c
