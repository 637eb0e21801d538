"""Independent per-sample references for published few-step methods' losses.

Each loss is written from its own paper (and, where one exists, its released code) in that
method's own coordinates and time convention, and is translated to this repository's network
only at the boundary. Nothing here imports `flow_maps`: these are the other side of a
comparison, so they must not share code with what they check.

Conventions shared by every function:
- Per sample: times are scalars, states are 1-D arrays [D]; run under `jax.enable_x64(True)`.
- `net(s, t, x) -> v_{s,t}(x)` in OUR convention: t = 0 is noise, t = 1 is data, the flow map
  is X_{s,t}(x) = x + (t - s) v_{s,t}(x), the linear interpolant I_t = (1 - t) x0 + t x1 and the
  trigonometric one I_t = cos(pi t / 2) x0 + sin(pi t / 2) x1, with noise x0 = sigma0 z.
- `net_teacher` has the same signature. The caller passes a stop-gradient-wrapped or EMA copy;
  each function still applies `jax.lax.stop_gradient` exactly where the method does, so a
  teacher that shares the student's parameters is also handled correctly.
- Every function returns a scalar whose `jax.grad` with respect to the parameters closed over
  in `net` is the method's published (pseudo-)gradient for one sample.
- Derivatives are `jax.jvp` of the per-sample functions (no finite differences).
- "|a|^2" means the squared norm summed over the sample's coordinates unless `reduce="mean"`.

Published sources read for this file (snapshots fetched with the search tool's `fetch`):
- MeanFlow: github.com/Gsunshine/meanflow @ d70cb55d, meanflow.py and configs/default.py.
- Shortcut models: github.com/kvfrans/shortcut-models @ 60100434, targets_shortcut.py,
  train.py, model.py.
- sCM: github.com/NVlabs/FastGen @ 34f30e8f, fastgen/methods/consistency_model/sCM.py and
  fastgen/configs/methods/config_scm.py (NVIDIA's reimplementation; OpenAI released no sCM code).
- Consistency models (the 2023 CM paper, the predecessor of iCT):
  github.com/openai/consistency_models_cifar10 @ d086e77d, jcm/losses.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

sg = jax.lax.stop_gradient


def _flow_map(net, s, t, x):
  """OUR flow map X_{s,t}(x) = x + (t - s) v_{s,t}(x), written out here on purpose."""
  return x + (t - s) * net(s, t, x)


def _reduce(sq, reduce):
  if reduce == "sum":
    return jnp.sum(sq)
  if reduce == "mean":
    return jnp.mean(sq)
  raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


# --------------------------------------------------------------------------------------------
# 1. MeanFlow (Geng et al. 2025, arXiv 2505.13447)
# --------------------------------------------------------------------------------------------

def meanflow_loss(net, e, x, r, t, *, p=1.0, c=1e-3, reduce="sum"):
  """MeanFlow's adaptively weighted loss for one sample.

  Paper (their symbols; t = 1 is NOISE): z_t = (1 - t) x + t e with x data and e noise,
  v = e - x, average velocity u(z, r, t) with z_r = z_t - (t - r) u(z_t, r, t),
    du/dt = jvp of u at (z_t, r, t) along (dz, dr, dt) = (v, 0, 1),
    u_tgt = v - (t - r) du/dt,   Delta = u(z_t, r, t) - sg(u_tgt),
    loss = sg(w) |Delta|^2,  w = 1 / (|Delta|^2 + c)^p.
  Translation: pass our noise x0 = sigma0 z as `e` and our data x1 as `x`; (r, t) are MeanFlow
  times, r <= t. Our s = 1 - t, our end time 1 - r, and u(z, r, t) = -net(1 - t, 1 - r, z).

  Official JAX code (meanflow.py, MeanFlow.forward): the squared error is SUMMED over the
  sample's coordinates (`jnp.sum(loss, axis=(1, 2, 3))`) and the adaptive weight is computed
  from that summed value, `loss / sg((loss + norm_eps) ** norm_p)`; hence `reduce="sum"`
  (default) is both the paper and the code; `reduce="mean"` uses the coordinate mean for the
  error and the weight alike. The code writes u_tgt = v - clip(t - r, 0, 1) du/dt (the clip is
  a no-op for 0 <= r <= t <= 1; kept). Its constant is norm_eps = 0.01 (module default and
  configs/default.py), not the 1e-3 used as this function's default; p = norm_p = 1.0.
  The network there is conditioned on (t, h = t - r); that is internal to their DiT.
  Time sampling: see `meanflow_sample_tr`.
  """
  z = (1.0 - t) * x + t * e
  v = e - x

  def u_fn(z_, r_, t_):
    return -net(1.0 - t_, 1.0 - r_, z_)

  u, du_dt = jax.jvp(u_fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
  u_tgt = sg(v - jnp.clip(t - r, 0.0, 1.0) * du_dt)
  sq_norm = _reduce((u - u_tgt) ** 2, reduce)
  w = sg(1.0 / (sq_norm + c) ** p)
  return w * sq_norm


def meanflow_sample_tr(key, n, *, p_mean=-0.4, p_std=1.0, data_proportion=0.75):
  """(r, t) for a batch of n as the official code draws them (MeanFlow.sample_tr), MF time.

  Two independent logit-normal draws sigmoid(p_std N(0, 1) + p_mean); t = max, r = min; then
  the FIRST int(n * data_proportion) rows (a fixed prefix, not a random subset) get r = t, where
  t is still the max of the two draws, so the r = t rows are NOT a single logit-normal draw.
  Returns (r, t), each [n]. In our time: s = 1 - t, end time 1 - r.
  """
  k1, k2 = jax.random.split(key)
  a = jax.nn.sigmoid(jax.random.normal(k1, (n,)) * p_std + p_mean)
  b = jax.nn.sigmoid(jax.random.normal(k2, (n,)) * p_std + p_mean)
  t, r = jnp.maximum(a, b), jnp.minimum(a, b)
  r = jnp.where(jnp.arange(n) < int(n * data_proportion), t, r)
  return r, t


# --------------------------------------------------------------------------------------------
# 2. Shortcut models (Frans et al. 2024, arXiv 2410.12557)
# --------------------------------------------------------------------------------------------

def _shortcut_s(net, x, t, d):
  """Their s(x, t, d), x_{t+d} ~ x_t + d s(x_t, t, d), in our network: net(t, t + d, x)."""
  return net(t, t + d, x)


def shortcut_loss(net, net_teacher, x0, x1, t, d, *, reduce="mean", eps=0.0, clip=None):
  """Shortcut self-consistency loss for one sample.

  Paper (same time direction as ours): x_t = (1 - t) x0 + t x1,
    s_tgt = sg[ s(x_t, t, d) / 2 + s(x'_{t+d}, t + d, d) / 2 ],  x'_{t+d} = x_t + d s(x_t, t, d)
  (both teacher evaluations), loss = |s(x_t, t, 2d) - s_tgt|^2 (student).
  Translation: s(x, t, d) = net(t, t + d, x). This is PSD-M: identical to
  `pmd_loss(net, net_teacher, t, t + d, t + 2 d, x_t)` when reduce="sum".

  Released code (targets_shortcut.py, train.py), reproduced by the keywords:
  - reduce: train.py takes `jnp.mean((v_prime - v_t) ** 2, axis=(1, 2, 3))`, the coordinate
    MEAN (default here); reduce="sum" is the paper's squared norm.
  - eps: the code's interpolant is x_t = (1 - (1 - 1e-5) t) x0 + t x1 (pass eps=1e-5).
  - clip: the code clips x'_{t+d} and the averaged target to [-4, 4] (pass clip=4.0).
  - the targets come from the EMA parameters (bootstrap_ema = 1, rate 0.999): pass the EMA net
    as `net_teacher`.
  Level and time sampling: see `shortcut_sample_bootstrap`.
  """
  x_t = (1.0 - (1.0 - eps) * t) * x0 + t * x1
  v_b1 = _shortcut_s(net_teacher, x_t, t, d)
  x_t2 = x_t + d * v_b1
  if clip is not None:
    x_t2 = jnp.clip(x_t2, -clip, clip)
  v_b2 = _shortcut_s(net_teacher, x_t2, t + d, d)
  target = (v_b1 + v_b2) / 2.0
  if clip is not None:
    target = jnp.clip(target, -clip, clip)
  target = sg(target)
  pred = _shortcut_s(net, x_t, t, 2.0 * d)
  return _reduce((pred - target) ** 2, reduce)


def shortcut_flow_matching_loss(net, x0, x1, t, d_flow, *, eps=1e-5, reduce="mean"):
  """The flow-matching rows of shortcut training, as the released code does them.

  Paper: |s(x_t, t, 0) - (x1 - x0)|^2. Code (targets_shortcut.py, step 4):
    x_t = (1 - (1 - 1e-5) t) x0 + t x1,  target v_t = x1 - (1 - 1e-5) x0,
  and the model is conditioned on dt_base = log2(denoise_timesteps) = 7, i.e. d = 1/128 (the
  smallest level), NOT d = 0; t = randint(0, 128) / 128. Loss: mean over coordinates.
  Translation: prediction net(t, t + d_flow, x_t); d_flow = 1/128 reproduces the code,
  d_flow = 0 (with eps=0, reduce="sum") the paper, i.e. our diagonal v_{t,t}.
  """
  x_t = (1.0 - (1.0 - eps) * t) * x0 + t * x1
  target = x1 - (1.0 - eps) * x0
  pred = _shortcut_s(net, x_t, t, d_flow)
  return _reduce((pred - target) ** 2, reduce)


def shortcut_sample_bootstrap(key, n_bootstrap, *, denoise_timesteps=128):
  """(t, d) of the self-consistency rows exactly as targets_shortcut.py draws them
  (bootstrap_dt_bias = 0, the default).

  L = log2(denoise_timesteps) = 7 levels; dt_base = [L-1, ..., 0] each repeated
  n_bootstrap // L times (deterministic, equal counts per level), the remainder padded with
  dt_base = 0. The STUDENT step is 2d = 2^-dt_base in {1/64, ..., 1/2, 1}; the teacher's half
  step is d = 2^-(dt_base + 1) in {1/128, ..., 1/2}. t = randint(0, 2^dt_base) / 2^dt_base, a
  uniform multiple of the student step 2d in [0, 1 - 2d]. The batch has
  n_bootstrap = batch_size // bootstrap_every rows of these, bootstrap_every = 8 (1/8).
  Returns (t, d), each [n_bootstrap]; feed them to `shortcut_loss`.
  """
  levels = int(np.log2(denoise_timesteps))
  per = n_bootstrap // levels
  dt_base = np.repeat(levels - 1 - np.arange(levels), per)
  dt_base = np.concatenate([dt_base, np.zeros(n_bootstrap - dt_base.shape[0], dtype=int)])
  sections = 2 ** dt_base
  t = jax.random.randint(key, (n_bootstrap,), 0, sections) / sections
  d = 1.0 / 2.0 ** (dt_base + 1)
  return t, jnp.asarray(d)


# --------------------------------------------------------------------------------------------
# 3. iCT: discrete consistency training (Song & Dhariwal 2023, arXiv 2310.14189)
# --------------------------------------------------------------------------------------------

def ict_sigmas(N, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  """Karras grid, increasing: sigma_i = (sigma_min^(1/rho) + i/(N-1) (sigma_max^(1/rho) -
  sigma_min^(1/rho)))^rho, i = 0..N-1 (the paper's sigma_1 < ... < sigma_N). numpy float64."""
  i = np.arange(N, dtype=np.float64)
  a, b = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (a + i / (N - 1) * (b - a)) ** rho


def ict_num_scales(k, K, s0=10, s1=1280):
  """iCT's exponential curriculum: N(k) = min(s0 2^floor(k / K'), s1) + 1 with
  K' = floor(K / (log2 floor(s1 / s0) + 1)); k the training step, K the total steps."""
  k_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
  return int(min(s0 * 2 ** math.floor(k / k_prime), s1) + 1)


def ict_index_probabilities(sigmas, p_mean=-1.1, p_std=2.0):
  """iCT's discrete log-normal over the pairs (sigma_i, sigma_{i+1}), i = 0..N-2:
  p(i) proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std))
                    - erf((log sigma_i - P_mean) / (sqrt 2 P_std)). numpy float64 [N-1]."""
  e = np.array([math.erf((math.log(sg_) - p_mean) / (math.sqrt(2.0) * p_std))
                for sg_ in np.asarray(sigmas, dtype=np.float64)])
  p = e[1:] - e[:-1]
  return p / p.sum()


def pseudo_huber(a, b, c):
  """d(a, b) = sqrt(|a - b|^2 + c^2) - c (squared norm summed). iCT: c = 0.00054 sqrt(D)."""
  return jnp.sqrt(jnp.sum((a - b) ** 2) + c ** 2) - c


def ict_consistency_function(net, x_sigma, sigma, *, sigma0):
  """iCT's f(x_sigma, sigma) in our network. VE: x_sigma = x1 + sigma z. Our
  I_s = (1 - s) sigma0 z + s x1 = s (x1 + sigma z) with s = sigma0 / (sigma0 + sigma), so
  f(x_sigma, sigma) = X_{s,1}(s x_sigma). (iCT's own c_skip makes f = id at sigma_min; ours is
  the identity at sigma = 0, s = 1.)"""
  s = sigma0 / (sigma0 + sigma)
  return _flow_map(net, s, 1.0, s * x_sigma)


def ict_loss(net, net_teacher, x1, z, sigma_i, sigma_ip1, *, sigma0, c):
  """iCT per-sample loss.

  Paper: lambda(sigma_i) d(f_theta(x1 + sigma_{i+1} z, sigma_{i+1}),
                          f_theta^-(x1 + sigma_i z, sigma_i)),
  lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i), d = pseudo-Huber, theta^- = sg(theta) (iCT
  drops the EMA teacher). The STUDENT sits at the NOISIER level sigma_{i+1}; the target is one
  grid step closer to the data, with the same z. Translation: f = `ict_consistency_function`,
  student at our s' = sigma0 / (sigma0 + sigma_{i+1}) < teacher's s = sigma0/(sigma0 + sigma_i).
  (Same placement as openai/consistency_models_cifar10 jcm/losses.py: there the grid is
  decreasing, the online model is at t = sigma[idx], the sg target at t2 = sigma[idx + 1] < t.)
  (The shared spec of this project wrote the residual with the student at the less noisy level,
  the reverse of iCT and CM; this function follows iCT.)
  """
  f_student = ict_consistency_function(net, x1 + sigma_ip1 * z, sigma_ip1, sigma0=sigma0)
  f_teacher = sg(ict_consistency_function(net_teacher, x1 + sigma_i * z, sigma_i,
                                          sigma0=sigma0))
  lam = 1.0 / (sigma_ip1 - sigma_i)
  return lam * pseudo_huber(f_student, f_teacher, c)


# --------------------------------------------------------------------------------------------
# 4. sCM: continuous-time consistency models, TrigFlow (Lu & Song 2024, arXiv 2410.11081)
# --------------------------------------------------------------------------------------------

def trig_s_from_t(t_trig):
  """TrigFlow time t in [0, pi/2] (t = 0 data) to our s in [0, 1] (s = 1 data)."""
  return 1.0 - 2.0 * t_trig / math.pi


def scm_F(net, x_t, t_trig, *, sigma_d):
  """TrigFlow's F(x_t / sigma_d, t) from our network: their consistency function
  f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, t) is our single-time map to the data
  X_{s,1}(x_t) = x_t + (1 - s) net(s, 1, x_t) with s = 1 - 2 t / pi, so
  F = (cos(t) x_t - X_{s,1}(x_t)) / (sin(t) sigma_d). Valid for 0 < t <= pi/2."""
  s = trig_s_from_t(t_trig)
  f = _flow_map(net, s, 1.0, x_t)
  return (jnp.cos(t_trig) * x_t - f) / (jnp.sin(t_trig) * sigma_d)


def _scm_parts(net_teacher, x_data, z, t_trig, *, sigma_d, r, c_norm, velocity, norm):
  x_t = jnp.cos(t_trig) * x_data + jnp.sin(t_trig) * z
  if velocity is None:
    dxt_dt = jnp.cos(t_trig) * z - jnp.sin(t_trig) * x_data  # consistency training
  else:
    dxt_dt = sg(velocity(x_t, t_trig))  # consistency distillation (pretrained PF-ODE velocity)
  cs = jnp.cos(t_trig) * jnp.sin(t_trig)
  F_fn = lambda x_, t_: scm_F(net_teacher, x_, t_, sigma_d=sigma_d)
  # cos(t) sin(t) dF^-/dt in one jvp, tangent cos(t) sin(t) (dx_t/dt, 1), as FastGen does.
  F_minus, cs_dF_dt = jax.jvp(F_fn, (x_t, t_trig), (cs * dxt_dt, cs))
  F_minus, cs_dF_dt = sg(F_minus), sg(cs_dF_dt)
  g = (-jnp.cos(t_trig) ** 2 * (sigma_d * F_minus - dxt_dt)
       - r * (cs * x_t + sigma_d * cs_dF_dt))
  if c_norm is not None:
    g_norm = jnp.sqrt(jnp.sum(g ** 2))
    if norm == "rms":
      g_norm = g_norm / math.sqrt(g.shape[-1])
    elif norm != "l2":
      raise ValueError(f"norm must be 'l2' or 'rms', got {norm!r}")
    g = g / (g_norm + c_norm)
  return x_t, F_minus, sg(g)


def scm_tangent(net_teacher, x_data, z, t_trig, *, sigma_d, r=1.0, c_norm=0.1, velocity=None,
                norm="l2"):
  """sCM's tangent g (Algorithm 1), under stop-gradient.

  Paper (their symbols; t in [0, pi/2], t = 0 DATA): x0 data, z ~ N(0, sigma_d^2 I),
  x_t = cos(t) x0 + sin(t) z; dx_t/dt = cos(t) z - sin(t) x0 (training) or
  dx_t/dt = `velocity(x_t, t)` (distillation, their time, e.g. sigma_d F_pretrain(x_t/sigma_d, t));
    g = -cos^2(t) (sigma_d F^- - dx_t/dt) - r cos(t) sin(t) (x_t + sigma_d dF^-/dt),
    g <- g / (|g| + c)       (c_norm=None skips it),
  with dF^-/dt the TOTAL derivative along (dx_t/dt, 1), obtained as FastGen does: one jvp of
  F^-(x, t) with tangent (cos t sin t dx_t/dt, cos t sin t), i.e. the product cos t sin t dF/dt.
  r (warm-up, min(1, step / 10000)) multiplies the whole second term: the x_t term and both
  the time-partial and spatial parts of dF^-/dt, not only the spatial Jacobian.
  norm="rms" divides |g| by sqrt(D) first (FastGen's default g_norm_spatial_invariance=True);
  "l2" is the paper. Translation: F^- = `scm_F(net_teacher, ...)`; our noise x0 = z, our
  sigma0 = sigma_d, our s = 1 - 2 t / pi with the trigonometric interpolant.
  """
  return _scm_parts(net_teacher, x_data, z, t_trig, sigma_d=sigma_d, r=r, c_norm=c_norm,
                    velocity=velocity, norm=norm)[2]


def scm_loss(net, net_teacher, x_data, z, t_trig, *, sigma_d, r=1.0, c_norm=0.1,
             velocity=None, norm="l2", reduce="sum", logvar=None):
  """sCM per-sample loss |F_theta(x_t/sigma_d, t) - F_theta^-(x_t/sigma_d, t) - g|^2.

  Paper, Algorithm 1: L = e^{w(t)} / D |F_theta - F_theta^- - g|^2 - w(t), theta^- = sg(theta)
  (F^- and its jvp from the same parameters under stop-gradient; FastGen: F_theta.detach()).
  Here the learned weight is optional: with `logvar` = u given the loss is
  exp(-u) L + u (EDM2/FastGen sign convention); reduce="mean" is the paper's 1/D.
  FastGen additionally multiplies by 1/sigma_t = 1/(sigma_d tan t) (prior_weighting_enabled)
  and divides the coordinate MEAN by D once more (divide_x_0_spatial_dim), not reproduced.
  Translation: F = `scm_F(net, ...)`; see `scm_tangent` for g.

  Gradient identity (r = 1, c_norm=None, reduce="sum", no logvar): with our
  s = 1 - 2 t / pi, v = v_{s,1}(x_t), b = dI_s/ds (our time; = -(pi/2) dx_t/dt),
  T = b + (1 - s)(d/ds v + grad_x v . b), the per-sample parameter gradient is
    grad scm_loss = kappa(s) grad |v - sg T|^2,
    kappa(s) = 2 (1 - s) tan(pi s / 2) / (pi sigma_d)  = (4 t / pi^2) cot(t) / sigma_d,
  (kappa -> 4 / (pi^2 sigma_d) at the data end s -> 1, -> 0 at the noise end); divide by D for
  reduce="mean". Derivation: g = cos(t) df^-/dt, grad F = -grad f / (sigma_d sin t),
  f = X_{s,1}, df/dt = -(2/pi)(d/ds X + grad X . b) = (2/pi)(v - T), grad f = (1 - s) grad v.
  `check_scm_kappa` verifies it numerically.
  """
  x_t, F_minus, g = _scm_parts(net_teacher, x_data, z, t_trig, sigma_d=sigma_d, r=r,
                               c_norm=c_norm, velocity=velocity, norm=norm)
  F = scm_F(net, x_t, t_trig, sigma_d=sigma_d)
  loss = _reduce((F - F_minus - g) ** 2, reduce)
  if logvar is not None:
    loss = jnp.exp(-logvar) * loss + logvar
  return loss


def scm_kappa(s, sigma_d):
  """kappa(s) = 2 (1 - s) tan(pi s / 2) / (pi sigma_d): grad scm_loss = kappa grad |v - sg T|^2."""
  return 2.0 * (1.0 - s) * jnp.tan(math.pi * s / 2.0) / (math.pi * sigma_d)


def check_scm_kappa(seed=0, D=3, hidden=8, n=6):
  """Max relative error (over n random samples, parameter-gradient norm) of
  grad scm_loss = kappa(s) grad |v - sg T|^2, for consistency training and for distillation with
  a random linear velocity, on a tiny random 2-layer tanh MLP, float64."""
  with jax.enable_x64(True):
    key = jax.random.PRNGKey(seed)
    ks = jax.random.split(key, 8)
    params = {
        "W1": jax.random.normal(ks[0], (hidden, D + 2)) / math.sqrt(D + 2),
        "b1": 0.1 * jax.random.normal(ks[1], (hidden,)),
        "W2": jax.random.normal(ks[2], (D, hidden)) / math.sqrt(hidden),
        "b2": 0.1 * jax.random.normal(ks[3], (D,)),
    }

    def mlp(p, s, t, x):
      h = jnp.tanh(p["W1"] @ jnp.concatenate([x, jnp.stack([s, t])]) + p["b1"])
      return p["W2"] @ h + p["b2"]

    sigma_d = 0.7
    A = jax.random.normal(ks[4], (D, D)) / math.sqrt(D)
    vel = lambda x, t: A @ x + jnp.sin(t) * jnp.ones(D)  # a "pretrained" velocity, their time
    x_data = jax.random.normal(ks[5], (n, D))
    z = sigma_d * jax.random.normal(ks[6], (n, D))
    t_trig = jax.random.uniform(ks[7], (n,), minval=0.05, maxval=math.pi / 2 - 0.05)

    def ours(p, xd, zz, tt, velocity):
      s = trig_s_from_t(tt)
      x = jnp.cos(tt) * xd + jnp.sin(tt) * zz  # = our I_s, noise zz, data xd
      if velocity is None:
        b = (math.pi / 2) * (-jnp.sin(math.pi * s / 2) * zz + jnp.cos(math.pi * s / 2) * xd)
      else:
        b = -(math.pi / 2) * velocity(x, tt)
      vfun = lambda s_, x_: mlp(p, s_, 1.0, x_)
      v, dv = jax.jvp(vfun, (s, x), (jnp.ones_like(s), b))
      T = sg(b + (1.0 - s) * dv)
      return jnp.sum((v - T) ** 2)

    def scm(p, xd, zz, tt, velocity):
      net = lambda s_, t_, x_: mlp(p, s_, t_, x_)
      teacher = lambda s_, t_, x_: mlp(sg(p), s_, t_, x_)
      return scm_loss(net, teacher, xd, zz, tt, sigma_d=sigma_d, r=1.0, c_norm=None,
                      velocity=velocity)

    worst = 0.0
    for velocity in (None, vel):
      for i in range(n):
        args = (x_data[i], z[i], t_trig[i], velocity)
        g_scm = jax.grad(scm)(params, *args)
        g_our = jax.grad(ours)(params, *args)
        kap = scm_kappa(trig_s_from_t(t_trig[i]), sigma_d)
        a = jnp.concatenate([jnp.ravel(l) for l in jax.tree_util.tree_leaves(g_scm)])
        b = kap * jnp.concatenate([jnp.ravel(l) for l in jax.tree_util.tree_leaves(g_our)])
        worst = max(worst, float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)))
    return worst


# --------------------------------------------------------------------------------------------
# 5. Flow-map distillation (Boffi et al. 2024, "Flow map matching", arXiv 2406.07507)
# --------------------------------------------------------------------------------------------

def lmd_loss(net, b, s, t, x, *, stop_gradient="teacher"):
  """Lagrangian map distillation: |d/dt X_{s,t}(x) - b_t(X_{s,t}(x))|^2, b frozen.

  FMM writes the plain regression (b a fixed pretrained velocity, no stop-gradient: the
  gradient also flows through X inside b_t(X)), which is stop_gradient="none". Default
  "teacher": b's output under sg (method.md §3 LSD with b in the teacher slot).
  d/dt X from one jvp in t (tangent 1), which also returns X. `b(t, x)`: scalar t, x [D].
  """
  X, dX_dt = jax.jvp(lambda t_: _flow_map(net, s, t_, x), (t,), (jnp.ones_like(t),))
  if stop_gradient == "teacher":
    target = sg(b(t, X))
  elif stop_gradient == "none":
    target = b(t, X)
  else:
    raise ValueError(f"stop_gradient must be 'teacher' or 'none', got {stop_gradient!r}")
  return jnp.sum((dX_dt - target) ** 2)


def emd_loss(net, b, s, t, x, *, stop_gradient="none"):
  """Eulerian map distillation: |d/ds X_{s,t}(x) + grad_x X_{s,t}(x) . b_s(x)|^2, b frozen.

  FMM's loss has no stop-gradient (b is frozen; the student is X): stop_gradient="none"
  (default, the FMM paper). "full": the spatial term grad_x X . b under sg (method.md §3 ESD's
  published placement, with b in place of v_{s,s}). "derivatives": |v - sg T|^2 (method.md §8,
  T = b + (t - s)(d/ds v + grad_x v . b)), same value. b_s(x) itself is always constant.
  """
  bx = sg(b(s, x))
  dX_ds = jax.jvp(lambda s_: _flow_map(net, s_, t, x), (s,), (jnp.ones_like(s),))[1]
  spatial = jax.jvp(lambda x_: _flow_map(net, s, t, x_), (x,), (bx,))[1]
  if stop_gradient == "none":
    res = dX_ds + spatial
  elif stop_gradient == "full":
    res = dX_ds + sg(spatial)
  elif stop_gradient == "derivatives":
    v = net(s, t, x)
    res = v - sg(v + dX_ds + spatial)  # = -(v - T) in value; gradient through v only
  else:
    raise ValueError(f"stop_gradient must be 'none', 'full' or 'derivatives', "
                     f"got {stop_gradient!r}")
  return jnp.sum(res ** 2)


def pmd_loss(net, net_teacher, s, u, t, x):
  """Progressive map distillation (two-step teacher composition, method.md §3 PSD weighting):
  |X_{s,t}(x) - sg X^teacher_{u,t}(X^teacher_{s,u}(x))|^2 / (t - s)^2, s < u < t.
  (FMM's PMD composes K teacher steps and has no 1/(t - s)^2; K = 2 and this weight are the
  brief's and method.md's form.)"""
  pred = _flow_map(net, s, t, x)
  target = sg(_flow_map(net_teacher, u, t, _flow_map(net_teacher, s, u, x)))
  return jnp.sum((pred - target) ** 2) / (t - s) ** 2
