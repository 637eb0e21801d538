"""Gaussian mixture in d dimensions (`docs/mixture_nd.md`), Eulerian self-distillation (ESD), full stop-gradient, as published.

The dimension and the Lipschitz knob are overrides: --config.data.dim=32
--config.data.separation=4 --config.data.component_std=0.25.
"""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.mixture_nd(variant), "esd")
