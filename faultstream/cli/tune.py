"""`faultstream tune`: replay the history under a grid of settings and report the best;
`--apply` makes the winner the running configuration, `--every` keeps doing it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from faultstream.events.config import Settings

from .arguments import finite_float, non_negative_int, positive_int
from .replay import add_source_arguments, source_from_args

# processors.tuning.grid.DEFAULT_MAX_CONFIGS (not imported at start: it pulls in numba).
DEFAULT_MAX_CONFIGS = 10_000


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "tune",
        parents=[common],
        help="replay the history under a grid of settings, score each, report the best",
        description="Each combination of the --grid values is replayed through the core "
        "over the history (as if in force throughout) and scored: failures kept off open "
        "circuits, successes refused, detection delay, open time, flapping.",
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="SETTING=V1,V2,…",
        help="values to try, e.g. worker.failure_threshold=3,5,8 (repeatable)",
    )
    parser.add_argument(
        "--weights",
        default="",
        metavar="NAME=W,…",
        help="score weights: protection, withheld, detection_delay (per s), open_time "
        "(per circuit-hour), flapping (defaults 1, 1, 0.05, 0.5, 2)",
    )
    parser.add_argument(
        "--max-configs",
        type=positive_int,
        default=DEFAULT_MAX_CONFIGS,
        help=f"refuse a grid of more combinations than this (default {DEFAULT_MAX_CONFIGS:,})",
    )
    parser.add_argument("--top", type=positive_int, default=5, help="how many of the best to show")
    parser.add_argument(
        "--processes",
        type=positive_int,
        default=None,
        help="parallel replays (default: every core)",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="replay every configuration through the core itself, not the compiled path",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="write the winner as a CONFIG_CHANGED record (actor tune) to <prefix>.control",
    )
    parser.add_argument(
        "--every",
        metavar="DURATION",
        help="repeat every DURATION (e.g. 1h) over a sliding --window; Ctrl-C stops",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=None, help="with --every: stop after N rounds"
    )
    parser.add_argument(
        "--window", metavar="DURATION", help="only the newest DURATION of the history"
    )
    parser.add_argument(
        "--bound",
        action="append",
        default=[],
        metavar="SETTING=LOW..HIGH",
        help="never propose a value outside LOW..HIGH (repeatable)",
    )
    parser.add_argument(
        "--min-events",
        type=non_negative_int,
        default=100,
        help="propose nothing on a smaller history",
    )
    parser.add_argument(
        "--min-improvement",
        type=finite_float,
        default=0.0,
        help="propose only when the winner's score beats the current one by this much",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faultstream.processors.offline.tune import (
        ColumnarHistory,
        TunePolicy,
        TuneRound,
        Weights,
        config_changed,
        format_round,
        parse_bounds,
        parse_grid,
        progress_bar,
        publish_control,
        tune_every,
        tune_round,
    )
    from faultstream.processors.simulator import parse_duration_ms

    every_ms = parse_duration_ms(args.every, name="--every") if args.every else None
    policy = TunePolicy(
        grid=parse_grid(args.grid, max_configs=args.max_configs),
        weights=Weights.parse(args.weights),
        bounds=parse_bounds(args.bound),
        min_events=args.min_events,
        min_improvement=args.min_improvement,
        period_ms=every_ms,
        window_ms=parse_duration_ms(args.window, name="--window") if args.window else None,
        processes=args.processes,
        exact=args.exact,
    )
    source, window = source_from_args(args, settings)

    def load() -> list | ColumnarHistory:
        # Columns where the source has them: no record is built unless the exact path runs.
        table = source.input_columns(window)
        if table is not None:
            return ColumnarHistory(table, lambda: source.inputs(window))
        return list(source.inputs(window))

    def report(outcome: TuneRound) -> None:
        print(format_round(outcome, args.top))
        verdict = "propose" if outcome.proposal is not None else "keep current"
        print(f"{verdict}: {outcome.reason}", flush=True)

    def apply(config: dict[str, Any]) -> None:
        record = config_changed(config)
        publish_control(record, settings.kafka)
        print(f"applied {record.event_id}: {config}", flush=True)

    if every_ms is None:
        outcome = tune_round(load(), settings.core, policy, progress=progress_bar(sys.stderr))
        report(outcome)
        if args.apply and outcome.proposal is not None:
            apply(outcome.proposal)
        return 0
    tune_every(
        load,
        settings.core,
        policy,
        apply if args.apply else (lambda config: None),
        report,
        period_s=every_ms / 1000.0,
        max_rounds=args.rounds,
    )
    return 0
