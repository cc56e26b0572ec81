"""Which code ran: the package version and, in a git checkout, its commit.

Recorded on every MLflow run (``hpsearch.code_version``) so that a result can be traced to
the code that produced it, on whichever node the trial ran.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def git_commit() -> str | None:
    """``<sha>`` (``<sha>-dirty`` with uncommitted changes to tracked files) of the checkout
    the package was imported from, or None outside a git work tree (an installed wheel)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(PACKAGE_DIR.parent), *args],
                                 capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != PACKAGE_DIR.parent:
        return None  # the package is not the top of a checkout (e.g. site-packages)
    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "hpsearch")
    return f"{sha}-dirty" if dirty else sha


def code_version() -> str:
    """``hpsearch <version>`` plus `` (<commit>)`` when imported from a git checkout."""
    sha = git_commit()
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("hpsearch")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        v = "unknown"
    return f"hpsearch {v}" + (f" ({sha})" if sha else "")
