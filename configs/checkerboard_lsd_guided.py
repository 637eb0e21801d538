"""Labelled checkerboard (label = one of the 8 even cells), LSD with classifier-free guidance
learned into the map (`docs/method.md` §9): one call per step at any w in [0, 4]."""

from flow_maps import config_defaults


def get_config(variant=None):
  c = config_defaults.with_preset(config_defaults.checkerboard(variant), "lsd")
  c.data.conditional = True
  c.data.label_dropout = 0.1
  c.guidance.learned = True
  c.guidance.w_min = 0.0
  c.guidance.w_max = 4.0
  c.eval.guidance = (0.0, 1.0, 2.0, 4.0)
  c.sample.guidance = (0.0, 1.0, 2.0, 4.0)
  return c
