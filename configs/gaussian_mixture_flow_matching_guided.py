"""Labelled eight-Gaussian ring (std 0.25, as `gaussian_mixture_lsd_guided.py`), class-conditional
flow matching with label dropout: the classic classifier-free-guidance model, evaluated with the
guided ODE at each w, and the conditional teacher of `gaussian_mixture_lmd_guided.py`
(`docs/method.md` §9)."""

from flow_maps import config_defaults


def get_config(variant=None):
  c = config_defaults.with_preset(config_defaults.gaussian_mixture(variant), "flow_matching")
  c.data.std = 0.25
  c.interpolant.sigma0 = 0.75
  c.data.conditional = True
  c.data.label_dropout = 0.1
  c.eval.guidance = (0.0, 1.0, 2.0, 4.0)  # the guided ODE; the map (unused here) is at w = 1
  return c
