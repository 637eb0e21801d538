"""Checkerboard, progressive self-distillation with the midpoint u (PSD-M, the shortcut objective)."""

from flow_maps import config_defaults


def get_config(variant=None):
  config = config_defaults.checkerboard(variant)
  config.objective.name = "psd"
  config.objective.psd_h = "midpoint"
  config.objective.stop_gradient = "teacher"
  return config
