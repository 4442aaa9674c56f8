"""The registries' shared rules (src/registry.py): one discovery mechanism for every registry (a package scan that
imports the modules registering in it), one `from_config(cfg, *runtime_args)` signature for every registered part,
and imports that only go downward (no model module imports the factory; the config imports no model)."""
import ast
import inspect
import os
import subprocess
import sys

import pytest

from src.errors import ConfigError
from src.registry import Registry, import_registering_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_package(root, name, modules):
    package = os.path.join(str(root), name)
    os.makedirs(package)
    with open(os.path.join(package, "__init__.py"), "w", encoding="utf-8") as f:
        f.write("")
    for module, source in modules.items():
        with open(os.path.join(package, module + ".py"), "w", encoding="utf-8") as f:
            f.write(source)
    return package


def test_discovery_imports_the_registering_modules_only(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_package(tmp_path, "toy_parts_pkg", {
        "registry": "from src.registry import Registry\n"
                    "TOYS = Registry('toy', 'model.toy', 'toy_parts_pkg', 'TOYS')\n",
        "alpha": "from toy_parts_pkg.registry import TOYS\n\n\n@TOYS.register('alpha')\nclass Alpha:\n"
                 "    @classmethod\n    def from_config(cls, cfg):\n        return cls()\n",
        "heavy": "raise RuntimeError('a module that registers nothing must not be imported')\n",
    })
    from toy_parts_pkg.registry import TOYS

    assert "toy_parts_pkg.alpha" not in sys.modules  # nothing is imported before the first look-up
    assert TOYS.keys() == ["alpha"]  # a new part is its file: no import list names it
    assert TOYS.get("alpha").__module__ == "toy_parts_pkg.alpha"
    assert "toy_parts_pkg.heavy" not in sys.modules
    with pytest.raises(ConfigError, match=r"unknown toy 'alpah' \(config key 'model.toy'\).*did you mean 'alpha'"):
        TOYS.get("alpah")


def test_import_registering_modules_names_what_it_imported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_package(tmp_path, "toy_scan_pkg", {"a": "X = 'BOXES.register'\n", "b": "Y = 1\n"})
    assert import_registering_modules("toy_scan_pkg", "BOXES.register") == ["toy_scan_pkg.a"]


def test_a_registry_without_a_package_discovers_nothing_and_needs_both_arguments():
    plain = Registry("thing", "model.thing")
    plain.register("x")(object)
    assert plain.keys() == ["x"] and "x" in plain
    with pytest.raises(ValueError, match="both package and name"):
        Registry("thing", "model.thing", package="src.models")


def test_every_model_registry_and_the_datasets_use_the_package_scan():
    from src.data.base import DATASETS
    from src.models import registry as models

    registries = [models.IMAGE_ENCODERS, models.FUSIONS, models.PIXEL_DECODERS, models.TRANSFORMER_DECODERS,
                  models.SMA_HEADS, models.MODELS]
    assert [r.package for r in registries] == ["src.models"] * len(registries)
    assert [r.name for r in registries] == ["IMAGE_ENCODERS", "FUSIONS", "PIXEL_DECODERS", "TRANSFORMER_DECODERS",
                                            "SMA_HEADS", "MODELS"]
    assert (DATASETS.package, DATASETS.name) == ("src.data", "DATASETS")


def test_a_fresh_process_finds_every_built_in_part_by_its_registry_alone():
    code = ("from src.models.registry import FUSIONS, IMAGE_ENCODERS, MODELS, PIXEL_DECODERS, SMA_HEADS, "
            "TRANSFORMER_DECODERS\n"
            "for r in (IMAGE_ENCODERS, FUSIONS, PIXEL_DECODERS, TRANSFORMER_DECODERS, SMA_HEADS, MODELS):\n"
            "    print(r.name, ','.join(r.keys()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    found = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert found == {"IMAGE_ENCODERS": "convnet,swin", "FUSIONS": "wpa", "PIXEL_DECODERS": "fpn,msdeform",
                     "TRANSFORMER_DECODERS": "masked_attention", "SMA_HEADS": "coupled,mixture",
                     "MODELS": "coupalign"}


def test_every_registered_part_builds_from_the_whole_config_first():
    from src.data.base import DATASETS
    from src.models import registry as models
    from src.models.sma import SentencePixelHead

    runtime = {"IMAGE_ENCODERS": [], "FUSIONS": ["stage", "visual_dim", "text_dim"],
               "PIXEL_DECODERS": ["in_channels"], "TRANSFORMER_DECODERS": [], "SMA_HEADS": ["text_dim"],
               "DATASETS": ["split"]}
    parts = [(name, getattr(models, name)) for name in runtime if hasattr(models, name)] + [("DATASETS", DATASETS)]
    checked = 0
    for name, registry in parts:
        for key in registry.keys():
            params = list(inspect.signature(registry.get(key).from_config).parameters)
            assert params == ["cfg"] + runtime[name], f"{name}[{key!r}].from_config{tuple(params)}"
            checked += 1
    assert checked >= 8
    assert list(inspect.signature(SentencePixelHead.from_config).parameters) == ["cfg", "text_dim"]


def _imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _python_files(folder):
    for base, _, files in os.walk(os.path.join(ROOT, folder)):
        for file in sorted(files):
            if file.endswith(".py"):
                yield os.path.join(base, file)


def test_imports_only_go_downward():
    """No model module imports the factory (nor the package root for it); the config imports no model, data or
    engine module; the package's __init__ imports nothing, so importing a registry loads no model."""
    for path in _python_files(os.path.join("src", "models")):
        if os.path.basename(path) == "factory.py":
            continue
        upward = [n for n in _imports(path) if n.startswith("src.models.factory") or n.startswith("src.engine")]
        assert not upward, f"{os.path.relpath(path, ROOT)} imports upward: {upward}"
    config_files = [os.path.join(ROOT, "src", "config.py")] + list(_python_files(os.path.join("src", "config")))
    for path in (p for p in config_files if os.path.isfile(p)):
        upward = [n for n in _imports(path) if n.split(".")[:2] in (["src", "models"], ["src", "data"],
                                                                     ["src", "engine"])]
        assert not upward, f"{os.path.relpath(path, ROOT)} imports upward: {upward}"
    assert _imports(os.path.join(ROOT, "src", "models", "__init__.py")) == []


def test_the_shared_layers_import_no_model_part():
    """src/models/layers is the bottom of the model package: a part imports layers, never the other way round."""
    for path in _python_files(os.path.join("src", "models", "layers")):
        upward = [n for n in _imports(path) if n.startswith("src.models.") and not n.startswith("src.models.layers")
                  and n.split(".")[2] not in ("cost", "registry")]
        assert not upward, f"{os.path.relpath(path, ROOT)} imports a model part: {upward}"


def test_no_module_in_src_is_over_500_lines():
    """The size at which a module stops being read in one pass (issue #23): split by concept beyond it."""
    sizes = {}
    for path in _python_files("src"):
        with open(path, encoding="utf-8") as f:
            sizes[os.path.relpath(path, ROOT)] = sum(1 for _ in f)
    assert sizes, "no modules found under src/"
    too_long = {path: n for path, n in sizes.items() if n > 500}
    assert not too_long, f"modules over 500 lines: {too_long}"
