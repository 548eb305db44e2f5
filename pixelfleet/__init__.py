"""pixelfleet: WebRTC signalling, matchmaking, TURN and GPU agents for Pixel Streaming fleets."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixelfleet")  # one source: pyproject.toml's version, via the installed metadata
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
