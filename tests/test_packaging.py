"""The wheel carries every package and data file a sleep needs (`pip install .` could not sleep).

.ci/run builds the wheel, installs it into a fresh environment and runs .ci/smoke_wheel.py
outside the checkout; these fast checks keep pyproject's explicit package list in step with
the tree.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = ("agent", "dreamer", "storage", "assets")


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: package for package, folder in config["package-dir"].items()}
    found = set()
    for top in SOURCE_ROOTS:
        for init in (ROOT / top).rglob("__init__.py"):
            folder = init.parent.relative_to(ROOT).as_posix()
            head = next((f for f in mapped if folder == f or folder.startswith(f + "/")), None)
            found.add(folder.replace(head, mapped[head], 1).replace("/", ".") if head else folder.replace("/", "."))
    assert found == set(config["packages"])


def test_the_data_files_are_package_data_found_through_importlib():
    from dreamer.sleep.config import ASSETS, preset_names

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["dreamer.assets"]
    listed = {p for pattern in patterns for p in (ROOT / "assets").glob(pattern)}
    needed = {ROOT / "assets" / "general_prompts.jsonl", ROOT / "assets" / "general_heldout.jsonl",
              *((ROOT / "assets" / "presets").glob("*.toml"))}
    assert needed <= listed
    assert ASSETS.resolve() == (ROOT / "assets").resolve() and {"cpu-tiny", "gpu-qlora"} <= set(preset_names())
