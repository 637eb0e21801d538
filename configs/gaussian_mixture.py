"""Eight Gaussians on the unit circle (not in the paper; its exact velocity and flow map are known,
`docs/method.md` §7), with any objective of the presets table (`docs/method.md` §8):

  --config=configs/gaussian_mixture.py:preset=esd,variant=demo
  --config=configs/gaussian_mixture.py:preset=meanflow,guidance=fixed

Arguments (`config_defaults.parse_arg`: `key=value`, comma-separated; each has a default):
  preset    a name of `config_defaults.PRESETS` (default lsd);
  variant   "" (the published 2-D setting: MLP 5 x 512, batch 100k, 250k steps), demo (a few
            CPU minutes) or smoke (seconds, for tests);
  guidance  none (components of std 0.1); learned: the component as a label and classifier-free
            guidance learned into the map for w in [0, 4]; labels: the component as a label,
            guidance not learned (the conditional map at w = 1, and the classifier-free-guided
            ODE evaluated at w = 0, 1, 2, 4: the classic guided model, and the conditional
            teacher of guided distillation); fixed: MeanFlow's own guidance, one
            scale (2) built into the conditional-velocity target, for preset=meanflow
            (`docs/method.md` §9). The labelled forms use components of std 0.25
            (`config_defaults.wide_gaussian_mixture`), which overlap so that guidance has
            something to do.
"""

from flow_maps import config_defaults as cd


def get_config(arg=None):
  a = cd.parse_arg(arg, preset="lsd", variant="", guidance="none",
                   choices=dict(cd.ARG_CHOICES, guidance=("none", "labels", "learned", "fixed")))
  if a.guidance == "none":
    return cd.with_preset(cd.gaussian_mixture(a.variant), a.preset)
  c = cd.with_preset(cd.wide_gaussian_mixture(a.variant), a.preset)
  return {"labels": cd.with_labels, "learned": cd.with_learned_guidance,
          "fixed": cd.with_fixed_guidance}[a.guidance](c)
