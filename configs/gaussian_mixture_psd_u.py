"""Eight-Gaussian ring, progressive self-distillation with u uniform between s and t (PSD-U)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.gaussian_mixture(variant), "psd_u")
