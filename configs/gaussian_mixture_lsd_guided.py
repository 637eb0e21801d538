"""Labelled eight-Gaussian ring (label = component), LSD with classifier-free guidance learned
into the map (`docs/method.md` §9): the network takes the label and the scale w in [0, 4], and
one call per step samples the exact guided flow's map at any w in that range. The components are
wider than the unconditional ring's (`config_defaults.wide_gaussian_mixture`: std 0.25 instead
of 0.1), so that they overlap and guidance has something to do.
Also `configs/gaussian_mixture.py:preset=lsd,guidance=learned`.
"""

from flow_maps import config_defaults as cd


def get_config(variant=None):
  return cd.with_learned_guidance(cd.with_preset(cd.wide_gaussian_mixture(variant), "lsd"))
