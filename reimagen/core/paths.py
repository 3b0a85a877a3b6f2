"""Where reimagen keeps what it builds (knowledge bases, indexes, checkpoints).

One root, :func:`home`, chosen in this order:

1. ``$REIMAGEN_HOME`` when set;
2. ``<repo>/.cache`` when running from a source checkout (a ``pyproject.toml`` in the folder
   above the package): the repo's ``.gitignore`` already ignores it, and the optional emoji
   artists (``scripts/install_artists.sh``) are installed there too;
3. ``~/.cache/reimagen`` otherwise (an installed wheel).

Nothing here creates folders; callers create what they write.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "REIMAGEN_HOME"


def source_checkout() -> Path | None:
    """The repository root when the package runs from a source checkout, else None."""
    package = Path(__file__).resolve().parents[1]  # .../reimagen
    root = package.parent
    return root if (root / "pyproject.toml").is_file() else None


def home() -> Path:
    """The root folder for reimagen's built files (see the module docstring for the order)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    root = source_checkout()
    if root is not None:
        return root / ".cache"
    return Path.home() / ".cache" / "reimagen"


def default_kb_dir(name: str = "emoji") -> Path:
    """``home()/kb/<name>``: where ``reimagen kb build`` writes a knowledge base by default."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"knowledge-base name must be a plain folder name, got {name!r}")
    return home() / "kb" / name
