"""The rules beyond consecutive failures against the seed's rule alone, on the incidents
they are for: the built-in `rules` scenario, closed-loop, several fixed seeds.

    .venv/bin/python bench/bench_incidents.py [--seeds 1-7] [--workers N] [--duration 1h]
                                              [--per-rule]

Each seed runs the simulated fleet (processors/simulator/rules.toml) once per arm, each
arm with its own core settings, closed-loop through the embedded pipeline (the fleet acts
on the arm's commands, so an arm that catches the flaky worker sooner also sends it less
work). Arms: the seed's rule alone (default settings: consecutive failures; load-balanced
targets are on by default in both) and the new rules on (a worker failure-rate window,
slow calls, outlier ejection, adaptive ladders); `--per-rule` adds one arm per rule.

Prints medians over the seeds of:
- the flaky worker (fails one task in three) and the throttled GPU (10x slower): in how
  many seeds a rule caught it, the delay from the incident's start to the first record
  that names a rule about it (processors/simulator/catches.py, as the demo reports it),
  the rule, and the tasks that failed on the flaky worker / ran slowly on the GPU before
  that (over the whole incident when not caught);
- the ladder rung that never works (batch cuts on rocm): the same catch (a rule on the
  class, or a command for it that no longer picks the batch cut) and its failed retries;
- move spread: the largest share of the move commands (DIFFERENT_WORKER,
  DIFFERENT_HARDWARE_CLASS, FALLBACK_CPU) that one target worker received, as the core
  chose the targets, and as the seed's target rule (the healthiest CLOSED live worker,
  ties by id) would have chosen them at the same moments from the same core state.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from faultstream.cli.simulate import build_embedded_simulation, finish_embedded_simulation
from faultstream.events.config import CoreSettings
from faultstream.events.models import DerivedRecord, RecoveryCommand
from faultstream.processors.simulator import load_scenario, parse_duration_ms
from faultstream.processors.simulator.catches import (
    GRACE_MS,
    Catch,
    first_catch,
    signals_of,
)
from faultstream.processors.simulator.incidents import IncidentState

SCENARIO = "rules"
MOVES = ("DIFFERENT_WORKER", "DIFFERENT_HARDWARE_CLASS", "FALLBACK_CPU")


def arms(slow_call_duration_s: float) -> dict[str, dict[str, Any]]:
    """Core setting changes per arm (CoreSettings.merged), the seed's rule first."""
    rate = {"failure_rate_threshold": 30, "sliding_window_size": 10,
            "minimum_number_of_calls": 10}  # fmt: skip
    slow = {"slow_call_duration_s": slow_call_duration_s, "slow_call_rate_threshold": 50,
            "sliding_window_size": 10, "minimum_number_of_calls": 10}  # fmt: skip
    outlier = {"outlier_stdev_factor": 1.9, "outlier_interval_s": 300}
    adaptive = {"adaptive": True, "adaptive_min_samples": 10}
    return {
        "seed rule alone": {},
        "new rules": {"circuits": {"worker": {**rate, **slow, **outlier}}, "recovery": adaptive},
        "failure rate only": {"circuits": {"worker": rate}},
        "slow calls only": {"circuits": {"worker": slow}},
        "outliers only": {"circuits": {"worker": outlier}},
        "adaptive only": {"recovery": adaptive},
    }


@dataclass
class RunFigures:
    flaky: Catch | None
    flaky_failed_before: int
    gpu: Catch | None
    gpu_slow_before: int
    rung: Catch | None
    rung_failed_retries: int
    moves: int
    spread_core: float
    spread_seed_rule: float


@dataclass
class MoveTargets:
    """Each move's target as the core chose it and as the seed's rule would have."""

    core: Counter[str] = field(default_factory=Counter)
    seed_rule: Counter[str] = field(default_factory=Counter)

    def observe(self, records: list[DerivedRecord], core: Any) -> None:
        moves = [r for r in records if isinstance(r, RecoveryCommand) and r.strategy in MOVES]
        if not moves:
            return
        view = core.workers_view()  # the core's state right after these records
        for move in moves:
            if move.target_worker_id is None:
                continue
            self.core[move.target_worker_id] += 1
            failed = view.get(move.worker_id, {})
            target_class = move.target_hardware_class or failed.get("hardware_class")
            candidates = [
                (-figures["health_percentage"], worker_id)
                for worker_id, figures in view.items()
                if worker_id != move.worker_id
                and figures["status"] == "live"
                and figures["state"] == "CLOSED"
                and figures["hardware_class"] == target_class
            ]
            if candidates:
                self.seed_rule[min(candidates)[1]] += 1


def run_arm(
    changes: dict[str, Any], seed: int, workers: int | None, duration_ms: int | None
) -> RunFigures:
    tap = io.StringIO()
    run = build_embedded_simulation(
        core_settings=CoreSettings().merged(changes),
        scenario_path=SCENARIO,
        seed=seed,
        workers=workers,
        duration_ms=duration_ms,
        tap=tap,
    )
    derived: list[DerivedRecord] = []
    targets = MoveTargets()
    core = run.pipeline.core

    def listen(records: list[DerivedRecord]) -> None:
        derived.extend(records)
        targets.observe(records, core)

    run.pipeline.subscribe(listen)
    finish_embedded_simulation(run)
    sim = run.simulator
    classes = {w.worker_id: w.hardware_class for w in sim.workers}
    signals = signals_of(derived, classes)
    by_kind = {state.spec.kind: state for state in sim.incidents}
    flaky, gpu = by_kind["flaky_worker"], by_kind["throttled_worker"]
    rung = by_kind["first_rung_fails"]
    inputs = (json.loads(line) for line in tap.getvalue().splitlines())
    outcomes = [record for record in inputs if record["kind"] in ("SUCCESS", "FAILURE")]
    flaky_catch, gpu_catch = first_catch(flaky, signals), first_catch(gpu, signals)
    return RunFigures(
        flaky=flaky_catch,
        flaky_failed_before=_on_worker_before(outcomes, flaky, flaky_catch, "FAILURE"),
        gpu=gpu_catch,
        gpu_slow_before=_on_worker_before(outcomes, gpu, gpu_catch, "SUCCESS", gpu.tasks),
        rung=first_catch(rung, signals),
        rung_failed_retries=sum(
            1
            for o in outcomes
            if o["kind"] == "FAILURE" and o["task_id"] in rung.tasks and o["attempt"] >= 1
        ),
        moves=sum(targets.core.values()),
        spread_core=_spread(targets.core),
        spread_seed_rule=_spread(targets.seed_rule),
    )


def _on_worker_before(
    outcomes: list[dict[str, Any]],
    state: IncidentState,
    catch: Catch | None,
    kind: str,
    tasks: set[str] | None = None,
) -> int:
    """Outcomes of `kind` on the incident's worker from its start until it was caught (the
    one that tipped the rule included: it had happened before anything could act)."""
    began = state.started_at or 0
    until = catch.ts if catch else began - state.spec.start_ms + state.spec.end_ms + GRACE_MS
    return sum(
        1
        for o in outcomes
        if o["kind"] == kind
        and o["worker_id"] in state.workers
        and began <= o["ts"] <= until
        and (tasks is None or o["task_id"] in tasks)
    )


def _spread(targets: Counter[str]) -> float:
    total = sum(targets.values())
    return max(targets.values()) / total if total else 0.0


def _seeds(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def _delay(catches: list[Catch | None]) -> str:
    delays = [c.delay_ms / 1000 if c else float("inf") for c in catches]
    median = statistics.median(delays)
    if median == float("inf"):
        return "not caught"
    return f"{int(median // 60)}m{int(median % 60):02d}s"


def _rule(catches: list[Catch | None]) -> str:
    rules = Counter(c.rule for c in catches if c)
    return rules.most_common(1)[0][0] if rules else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-7", help="e.g. 1-7 or 3,5,8 (default 1-7)")
    parser.add_argument("--workers", type=int, help="fleet size (default: the scenario's, 40)")
    parser.add_argument("--duration", help="simulated time (default: the scenario's, 1h)")
    parser.add_argument("--per-rule", action="store_true", help="also one arm per rule")
    args = parser.parse_args()
    seeds = _seeds(args.seeds)
    duration_ms = parse_duration_ms(args.duration) if args.duration else None
    scenario = load_scenario(SCENARIO)
    # Slow: twice the longest normal task; the throttled GPU's are 10x theirs.
    longest_s = max(spec.duration_s[1] for spec in scenario.task_types.values())
    chosen = arms(2 * longest_s)
    if not args.per_rule:
        chosen = {name: chosen[name] for name in ("seed rule alone", "new rules")}
    started = time.perf_counter()
    figures = {
        name: [run_arm(changes, seed, args.workers, duration_ms) for seed in seeds]
        for name, changes in chosen.items()
    }
    elapsed = time.perf_counter() - started
    print(
        f"scenario {SCENARIO!r}: {args.workers or scenario.workers} workers, "
        f"{(duration_ms or scenario.duration_ms) // 60_000} min, seeds {args.seeds}, "
        f"closed loop per arm; slow_call_duration_s = {2 * longest_s:g}; "
        f"{len(seeds) * len(chosen)} runs in {elapsed:.1f} s. Medians over seeds."
    )
    width = max(18, *(len(name) + 2 for name in chosen))
    rows: list[tuple[str, Any]] = [
        ("flaky worker caught", lambda f: f"{sum(1 for r in f if r.flaky)}/{len(f)}"),
        ("  detection delay", lambda f: _delay([r.flaky for r in f])),
        ("  caught by (most often)", lambda f: _rule([r.flaky for r in f])),
        ("  tasks failed before", lambda f: _median(r.flaky_failed_before for r in f)),
        ("throttled GPU caught", lambda f: f"{sum(1 for r in f if r.gpu)}/{len(f)}"),
        ("  detection delay", lambda f: _delay([r.gpu for r in f])),
        ("  caught by (most often)", lambda f: _rule([r.gpu for r in f])),
        ("  slow tasks before", lambda f: _median(r.gpu_slow_before for r in f)),
        ("rung that never works caught", lambda f: f"{sum(1 for r in f if r.rung)}/{len(f)}"),
        ("  detection delay", lambda f: _delay([r.rung for r in f])),
        ("  caught by (most often)", lambda f: _rule([r.rung for r in f])),
        ("  failed retries, whole run", lambda f: _median(r.rung_failed_retries for r in f)),
        ("moves with a target", lambda f: _median(r.moves for r in f)),
        ("  spread, core's targets", lambda f: f"{_median(r.spread_core for r in f):.0%}"),
        ("  spread, seed's target rule", lambda f: f"{_median(r.spread_seed_rule for r in f):.0%}"),
    ]
    print(f"{'':<30}" + "".join(f"{name:>{width}}" for name in chosen))
    for label, cell in rows:
        print(f"{label:<30}" + "".join(f"{cell(f)!s:>{width}}" for f in figures.values()))


def _median(values: Any) -> Any:
    median = statistics.median(list(values))
    return int(median) if float(median).is_integer() else median


if __name__ == "__main__":
    main()
