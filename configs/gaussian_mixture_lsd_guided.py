"""Labelled eight-Gaussian ring (label = component), LSD with classifier-free guidance learned
into the map (`docs/method.md` §9): the network takes the label and the scale w in [0, 4], and
one call per step samples the exact guided flow's map at any w in that range.

The components are wider than the unconditional ring's (std 0.25 instead of 0.1), so that they
overlap and guidance has something to do: at w = 0 a sample's nearest mode is its label's only by
chance, and the fraction rises with w.
"""

from flow_maps import config_defaults


def get_config(variant=None):
  c = config_defaults.with_preset(config_defaults.gaussian_mixture(variant), "lsd")
  c.data.std = 0.25
  c.interpolant.sigma0 = 0.75  # the data std per coordinate: sqrt(radius^2 / 2 + std^2)
  return config_defaults.with_learned_guidance(c)
