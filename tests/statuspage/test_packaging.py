"""An installed wheel has the page's templates: pyproject's package data names them all
(checked once by hand with ``pip wheel .``: the three templates are in the wheel)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_template_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["outagewatch"]
    package = ROOT / "src" / "outagewatch"
    templates = sorted((package / "statuspage" / "templates").iterdir())
    assert templates
    missing = [t.name for t in templates
               if not any(fnmatch.fnmatch(t.relative_to(package).as_posix(), p)
                          for p in patterns)]
    assert [] == missing
    assert "jinja2>=3.1" in config["project"]["dependencies"]
