"""Labelled checkerboard (label = one of the 8 even cells), LSD with classifier-free guidance
learned into the map (`docs/method.md` §9): one call per step at any w in [0, 4]."""

from flow_maps import config_defaults


def get_config(variant=None):
  c = config_defaults.with_preset(config_defaults.checkerboard(variant), "lsd")
  return config_defaults.with_learned_guidance(c)
