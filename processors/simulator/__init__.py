"""A simulated fleet of test workers with scripted, seed-reproducible incidents."""

from .fleet import EPOCH_MS, FleetSimulator
from .incidents import IncidentState
from .scenario import Scenario, load_scenario, parse_duration_ms

__all__ = [
    "EPOCH_MS",
    "FleetSimulator",
    "IncidentState",
    "Scenario",
    "load_scenario",
    "parse_duration_ms",
]
