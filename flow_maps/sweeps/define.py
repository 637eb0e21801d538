"""Defining a sweep (`flow_maps.sweeps`): members as override dicts built with `axis`, `zipped`
and `product`, the `Sweep` they belong to, its expansion into numbered, named `Member`s, and
`load_sweep` for a sweep file's `get_sweep(arg)`."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

MODES = ("train", "eval", "sample", "train_and_eval")
CONFIG_KEY = "config"  # the reserved member key naming a config file


# --------------------------------------------------------------------------- building members


def axis(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """One override taking each of `values`: [{key: v} for v in values]."""
  return [{key: v} for v in values]


def zipped(columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Several overrides varied together: {"a": [1, 2], "b": [3, 4]} -> [{a: 1, b: 3}, {a: 2, b: 4}]."""
  lengths = {k: len(v) for k, v in columns.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zipped: columns of different lengths {lengths}")
  n = next(iter(lengths.values()), 0)
  return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def product(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Every combination of one entry per axis, merged, the last axis varying fastest.

  Each axis is a list of override dicts (from `axis`, `zipped`, or written out); a key set by two
  axes is an error.
  """
  members: list[dict[str, Any]] = [{}]
  for ax in axes:
    merged = []
    for left in members:
      for right in ax:
        clash = set(left) & set(right)
        if clash:
          raise ValueError(f"product: key(s) {sorted(clash)} set by more than one axis")
        merged.append({**left, **right})
    members = merged
  return members


# --------------------------------------------------------------------------- the sweep


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a sweep: a config file (with variant) and its overrides."""

  index: int
  name: str
  config: str  # path as written in the sweep (relative to base_dir, or absolute)
  variant: str
  overrides: dict[str, Any]  # every override, the sweep's common ones included
  # Where relative config paths start and the member's process runs: the directory that holds
  # `configs/` (as for `python -m flow_maps.main --config=configs/...`).
  base_dir: str = "."

  @property
  def config_path(self) -> str:
    return resolve_path(self.config, self.base_dir)

  @property
  def config_arg(self) -> str:
    return self.config_path + (f":{self.variant}" if self.variant else "")

  def workdir(self, root: str) -> str:
    return os.path.join(root, f"{self.index}_{self.name}")


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A base config and a list of members (override dicts), run in one mode.

  config:    the base config file, relative to the directory given to `expand` (or absolute);
  variant:   the config variant for every member ("", "demo", "smoke");
  members:   override dicts, one per member; the key "config" replaces the config file;
  overrides: applied to every member before its own (not part of the member names);
  mode:      what each member runs: train | eval | sample | train_and_eval;
  name:      the sweep's name (defaults to the sweep file's name).
  """

  config: str
  members: Sequence[Mapping[str, Any]]
  variant: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  mode: str = "train_and_eval"
  name: str = ""

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"sweep mode: unknown {self.mode!r}; allowed: {MODES}")
    if not self.members:
      raise ValueError("a sweep needs at least one member")
    if CONFIG_KEY in self.overrides:
      raise ValueError(f"sweep overrides: use the sweep's `config` field, not {CONFIG_KEY!r}")

  def expand(self, base_dir: Optional[str] = None) -> list[Member]:
    """The members, numbered from 0, each named by the overrides that vary across the sweep;
    relative config paths start from `base_dir` (default: the current directory, as for the
    CLI's own `--config`)."""
    base_dir = os.path.abspath(base_dir or os.getcwd())
    full = []
    for m in self.members:
      m = dict(m)
      m.setdefault(CONFIG_KEY, self.config)
      full.append(m)
    varying = varying_keys(full)
    out = []
    for index, m in enumerate(full):
      name = member_name({k: v for k, v in m.items() if k in varying})
      config = m.pop(CONFIG_KEY)
      out.append(Member(index=index, name=name or "base", config=config, variant=self.variant,
                        overrides={**self.overrides, **m}, base_dir=base_dir))
    names = [x.name for x in out]
    if len(set(names)) != len(names):
      raise ValueError(f"sweep members are not distinct: {names}")
    return out


def varying_keys(members: Sequence[Mapping[str, Any]]) -> set[str]:
  """The keys whose value is not the same in every member (a key absent somewhere varies)."""
  keys = set().union(*members) if members else set()
  missing = object()
  return {k for k in keys if len({repr(m.get(k, missing)) for m in members}) > 1}


def _name_part(key: str, value: Any) -> str:
  if key == CONFIG_KEY:
    return os.path.splitext(os.path.basename(str(value)))[0]
  return f"{key.rsplit('.', 1)[-1]}={value}"


def member_name(overrides: Mapping[str, Any]) -> str:
  """A directory-safe name from overrides, in their order:
  {"config": "configs/checkerboard_esd.py", "seed": 1} -> "checkerboard_esd-seed=1"."""
  parts = [_name_part(k, v) for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))


def resolve_path(path: str, base_dir: str) -> str:
  return path if os.path.isabs(path) else os.path.join(base_dir, path)


def load_sweep(spec: str) -> Sweep:
  """`path/to/sweep.py[:arg]` -> the Sweep its `get_sweep(arg)` returns."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"sweep file not found: {path}")
  module_name = "_sweep_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise AttributeError(f"{path} defines no get_sweep(arg=None)")
  sweep = module.get_sweep(arg or None)
  if not sweep.name:
    stem = os.path.splitext(os.path.basename(path))[0]
    sweep = dataclasses.replace(sweep, name=stem + (f"_{arg}" if arg else ""))
  return sweep
