"""scikit-learn's 8x8 digits (shipped in the wheel, no download), LSD: the image pipeline at CPU
scale (`config_defaults.digits`)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.digits(variant), "lsd")
