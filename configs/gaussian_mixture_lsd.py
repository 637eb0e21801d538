"""Eight-Gaussian ring, Lagrangian self-distillation (LSD), teacher stop-gradient, as published."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.gaussian_mixture(variant), "lsd")
