"""Checkerboard, progressive self-distillation with the midpoint u (PSD-M: the shortcut-model objective)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "psd_m")
