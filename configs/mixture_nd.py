"""K Gaussians in d dimensions whose velocity's Lipschitz constant is a knob (`docs/mixture_nd.md`;
not in the paper), with any objective of the presets table (`docs/method.md` §8):

  --config=configs/mixture_nd.py:preset=lsd,dim=32,separation=4.0,variant=demo

Arguments (`config_defaults.parse_arg`: `key=value`, comma-separated; each has a default):
  preset         a name of `config_defaults.PRESETS` (default lsd);
  variant        "" (the published 2-D setting's MLP and budget), demo or smoke;
  dim            the dimension d (2 or more; default: the variant's);
  separation     the distance between any two component means (default 2.0);
  component_std  every component's standard deviation (default 0.25).
The Lipschitz constant of the exact velocity grows as separation^2 / component_std^3
(`config_defaults.mixture_nd`, `data/mixture_nd.py`). Out-of-range values are refused by the
config's validation, like the same overrides (`--config.data.dim=...`).
"""

from flow_maps import config_defaults as cd


def get_config(arg=None):
  a = cd.parse_arg(arg, preset="lsd", variant="", dim=0, separation=2.0, component_std=0.25,
                   choices=cd.ARG_CHOICES)
  c = cd.with_preset(cd.mixture_nd(a.variant), a.preset)
  if a.dim:  # 0: the variant's own dimension
    c.data.dim = a.dim
  c.data.separation, c.data.component_std = a.separation, a.component_std
  return c
