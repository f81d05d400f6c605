"""The pure, deterministic core: circuits, recovery planning, lost workers (CIRCUITS.md)."""

from .fleet import FleetCore

__all__ = ["FleetCore"]
