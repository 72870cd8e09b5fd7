"""The wheel's package list must name every Python package folder, or a non-editable install misses modules."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = {ROOT / folder for folder in setuptools["package-dir"].values()}
    assert set(setuptools["packages"]) == set(setuptools["package-dir"])
    roots = sorted(listed, key=lambda p: len(p.parts))
    found = {init.parent for root in roots for init in root.rglob("__init__.py")}
    missing = sorted(str(p.relative_to(ROOT)) for p in found - listed)
    assert not missing, f"package folders missing from pyproject's packages/package-dir: {missing}"
