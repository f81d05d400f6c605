"""The tuner: replay a history under a grid of settings, score each, propose the best."""

from .apply import config_changed, publish_control
from .columns import ColumnarHistory, ColumnarInputs
from .grid import Candidate, expand_grid, nested, parse_bounds, parse_grid, setting_path
from .report import format_round
from .runner import Result, evaluate, progress_bar, run_grid
from .score import Score, Weights, score_history
from .session import TunePolicy, TuneRound, settings_in_force, tune_every, tune_round

__all__ = [
    "Candidate",
    "ColumnarHistory",
    "ColumnarInputs",
    "Result",
    "Score",
    "TunePolicy",
    "TuneRound",
    "Weights",
    "config_changed",
    "evaluate",
    "expand_grid",
    "format_round",
    "nested",
    "parse_bounds",
    "parse_grid",
    "progress_bar",
    "publish_control",
    "run_grid",
    "score_history",
    "setting_path",
    "settings_in_force",
    "tune_every",
    "tune_round",
]
