"""Eight-Gaussian ring, flow matching only (every row on the diagonal): the baseline, sampled with the ODE on b_t = v_{t,t}."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.gaussian_mixture(variant), "flow_matching")
