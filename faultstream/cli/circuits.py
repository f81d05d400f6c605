"""`faultstream circuits`: the current circuits, and operators' resets and force-opens.

`list` and `show` read the live view of `<prefix>.circuits` (faultstream.events.circuit_view),
or a recorded history with `--db`/`--read-models`. `reset`, `reset --all` and
`force-open` write OPERATOR records to `<prefix>.control` carrying `--actor`, as the
dashboard's operations page does; they are refused unless the operator token is configured
(`[dashboard] operator_token`) and given (`--token` or FAULTSTREAM_OPERATOR_TOKEN).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable

from faultstream.events.admin import KafkaAdminError, describe_topics
from faultstream.events.circuit_view import Circuit, CircuitView
from faultstream.events.config import Settings
from faultstream.events.control import publish_control
from faultstream.events.models import (
    CircuitKind,
    CircuitState,
    CircuitStateChanged,
    Operator,
    OperatorAction,
)

from . import CliError
from .arguments import topic_prefix, with_kafka_flags

TOKEN_ENV = "FAULTSTREAM_OPERATOR_TOKEN"
ACTOR_PREFIX = "cli:"
KINDS = [kind.value for kind in CircuitKind]
STATES = [state.value for state in CircuitState]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "circuits",
        parents=[common],
        help="list, show, reset or force open circuits",
        description="The current circuits, from the live view of <prefix>.circuits or from "
        "a history (--db, --read-models); and operators' actions on them, written as "
        "OPERATOR records to <prefix>.control (the processor acts on them). A circuit that "
        "never changed state has no record and is CLOSED.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    source = argparse.ArgumentParser(add_help=False)
    where = source.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help="read a DuckDB history instead of Kafka")
    where.add_argument(
        "--read-models", metavar="DIR", help="read the projector's read models instead of Kafka"
    )
    source.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    kafka = argparse.ArgumentParser(add_help=False)
    kafka.add_argument("--bootstrap-servers", help="default: kafka.bootstrap_servers")
    kafka.add_argument(
        "--prefix", type=topic_prefix, help="topic prefix (default: kafka.topic_prefix)"
    )

    operator = argparse.ArgumentParser(add_help=False)
    operator.add_argument(
        "--actor", required=True, help="who is acting; recorded on the record as cli:ACTOR"
    )
    operator.add_argument(
        "--token",
        help=f"the operator token (default: ${TOKEN_ENV}, which keeps it out of the process "
        "list); must match dashboard.operator_token",
    )

    listing = actions.add_parser(
        "list",
        parents=[common, source, kafka],
        help="the circuits that changed state, by kind then id",
        description="Every circuit with a recorded state change: kind, id, state, health, "
        "since when, when an OPEN one is due to half-open, and why. From a history, the "
        "health is the core's newest figures of the circuit (as of its last TICK).",
    )
    listing.add_argument("--kind", choices=KINDS, help="only circuits of this kind")
    listing.add_argument("--state", type=str.upper, choices=STATES, help="only this state")
    listing.set_defaults(run=run_list)

    show = actions.add_parser(
        "show",
        parents=[common, source, kafka],
        help="one circuit in full",
        description="One circuit's newest record: state, health, counters, due moment, "
        "reason and the input that caused it.",
    )
    show.add_argument("kind", metavar="KIND", choices=KINDS, help=", ".join(KINDS))
    show.add_argument("id", metavar="ID", help="the worker id, hardware class or task type")
    show.set_defaults(run=run_show)

    reset = actions.add_parser(
        "reset",
        parents=[common, operator, kafka],
        help="close a circuit (or every circuit that is not CLOSED)",
        description="Writes a RESET for the circuit: the processor puts it back to CLOSED with "
        "its counters at 0. With --all, one RESET for every circuit the live view shows "
        "not CLOSED (optionally of one --kind).",
    )
    reset.add_argument("kind", metavar="KIND", nargs="?", help=", ".join(KINDS))
    reset.add_argument("id", metavar="ID", nargs="?")
    reset.add_argument("--all", action="store_true", help="every circuit not CLOSED")
    reset.add_argument("--kind", dest="only_kind", choices=KINDS, help="with --all: one kind")
    reset.set_defaults(run=run_reset)

    force = actions.add_parser(
        "force-open",
        parents=[common, operator, kafka],
        help="open a circuit until an operator resets it",
        description="Writes a FORCE_OPEN for the circuit: it refuses work (FORCED_OPEN) and "
        "never half-opens by itself.",
    )
    force.add_argument("kind", metavar="KIND", choices=KINDS, help=", ".join(KINDS))
    force.add_argument("id", metavar="ID")
    force.set_defaults(run=run_force_open)


# --- reading ------------------------------------------------------------------------------


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    view = _view(args, settings)
    circuits = view.select(kind=args.kind, state=args.state)
    if args.json:
        for circuit in circuits:
            print(json.dumps(circuit.as_dict(), ensure_ascii=False), flush=False)
        sys.stdout.flush()
        return 0
    if not circuits:
        print(f"no circuits {_filter_text(args)}", file=sys.stderr)
        return 0
    _print_table(circuits)
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    view = _view(args, settings)
    circuit = view.get(args.kind, args.id)
    if args.json:
        body = (
            circuit.as_dict()
            if circuit is not None
            else {"kind": args.kind, "id": args.id, "state": "CLOSED", "recorded": False}
        )
        print(json.dumps(body, ensure_ascii=False))
        return 0
    if circuit is None:
        print(f"{args.kind}:{_text(args.id)}  CLOSED  (no state change recorded)")
        return 0
    due = circuit.due_at
    rows = [
        ("circuit", f"{circuit.kind.value}:{_text(circuit.id)}"),
        ("state", f"{circuit.state.value} since {_iso(circuit.since)}"),
        ("health", f"{circuit.health:g}"),
        ("due to half-open", "-" if due is None else _due_text(due)),
        ("trips", str(circuit.trips)),
        ("consecutive failures", str(circuit.consecutive_failures)),
        ("reset timeout", f"{circuit.reset_timeout_s:g} s"),
        ("from", circuit.from_state.value),
        ("reason", _text(circuit.reason)),
        ("caused by", _text(circuit.caused_by)),
        ("record", _text(circuit.event_id)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _view(args: argparse.Namespace, settings: Settings) -> CircuitView:
    if args.db is None and args.read_models is None:
        settings = with_kafka_flags(settings, args.bootstrap_servers, args.prefix)
        return CircuitView.from_kafka(settings, follow=False)
    # The history needs duckdb (the [history] extra): imported only here.
    from faultstream.projections.queries import History

    from .dashboard import check_history

    check_history(args.db, args.read_models, db_flag="--db")
    if args.read_models is not None:
        history = History.from_read_models(args.read_models, settings.core)
    else:
        history = History.from_db(args.db, settings.core)
    view = CircuitView(settings.circuits)
    fields = CircuitStateChanged.model_fields
    with history:
        # A transition's health is its health at that moment; the core's newest figures
        # (published at its TICKs) carry the health it has counted since.
        health = {
            (row["circuit_kind"], row["circuit_id"]): (row["ts"], row["state"], row["health"])
            for row in history.figures()
        }
        for row in history.current_states():
            ts, state, now = health.get((row["circuit_kind"], row["circuit_id"]), (0, None, 0))
            if state == row["to_state"] and ts >= row["ts"]:
                row = {**row, "health": now}
            view.apply(CircuitStateChanged.model_validate({k: row[k] for k in fields}))
    return view


def _print_table(circuits: Iterable[Circuit]) -> None:
    header = ("KIND", "ID", "STATE", "HEALTH", "SINCE", "DUE", "REASON")
    rows = [
        (
            c.kind.value,
            _text(c.id),
            c.state.value,
            f"{c.health:g}",
            _iso(c.since),
            "-" if c.due_at is None else _iso(c.due_at),
            _text(c.reason),
        )
        for c in circuits
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _filter_text(args: argparse.Namespace) -> str:
    parts = [
        f"of kind {args.kind}" if args.kind else "",
        f"in state {args.state}" if args.state else "",
    ]
    return " ".join(p for p in parts if p) or "have changed state"


def _text(value: str) -> str:
    """Ids and reasons as one printable line, whatever control characters they hold."""
    return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _due_text(due: int) -> str:
    left = (due - time.time_ns() // 1_000_000) / 1000
    when = f"in {left:.0f} s" if left > 0 else "due now (the processor half-opens it next input)"
    return f"{_iso(due)} ({when})"


# --- operators ----------------------------------------------------------------------------


def run_reset(args: argparse.Namespace, settings: Settings) -> int:
    if args.all:
        if args.kind is not None or args.id is not None:
            raise CliError("reset: give KIND ID or --all, not both")
    else:
        if args.only_kind is not None:
            raise CliError("reset: --kind goes with --all (for one circuit, give KIND ID)")
        _circuit_args(args)
    actor = _authorize(args, settings)
    settings = with_kafka_flags(settings, args.bootstrap_servers, args.prefix)
    _require_control_topic(settings)
    if not args.all:
        _publish(settings, [_operator(OperatorAction.RESET, args.kind, args.id, actor)])
        return 0
    view = CircuitView.from_kafka(settings, follow=False)
    targets = [c for c in view.select(kind=args.only_kind) if c.state is not CircuitState.CLOSED]
    if not targets:
        print("nothing to reset: every circuit is CLOSED", file=sys.stderr)
        return 0
    records = [_operator(OperatorAction.RESET, c.kind.value, c.id, actor) for c in targets]
    _publish(settings, records)
    return 0


def run_force_open(args: argparse.Namespace, settings: Settings) -> int:
    _circuit_args(args)
    actor = _authorize(args, settings)
    settings = with_kafka_flags(settings, args.bootstrap_servers, args.prefix)
    _require_control_topic(settings)
    _publish(settings, [_operator(OperatorAction.FORCE_OPEN, args.kind, args.id, actor)])
    return 0


def _circuit_args(args: argparse.Namespace) -> None:
    if args.kind is None or args.id is None:
        raise CliError(f"{args.action}: name the circuit (KIND ID)")
    if args.kind not in KINDS:
        raise CliError(f"KIND: {args.kind!r} is not one of {', '.join(KINDS)}")
    if not args.id.strip():
        raise CliError("ID: name the circuit")


def _authorize(args: argparse.Namespace, settings: Settings) -> str:
    """The actor to record, once the given token matches the configured one. Neither
    token is ever printed."""
    configured = settings.dashboard.operator_token
    if not configured:
        raise CliError(
            "operations are disabled: no operator token is configured "
            "(set dashboard.operator_token or FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN)"
        )
    given = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if not given or not hmac.compare_digest(configured.encode(), given.encode()):
        raise CliError(f"operator token: missing or wrong (--token or ${TOKEN_ENV})")
    name = args.actor.strip()
    if not name:
        raise CliError("--actor: say who you are; every action carries its actor")
    return f"{ACTOR_PREFIX}{name}"[:128]


def _operator(action: OperatorAction, kind: str, circuit_id: str, actor: str) -> Operator:
    return Operator(
        event_id=f"cli-{uuid.uuid4().hex}",
        ts=time.time_ns() // 1_000_000,
        action=action,
        circuit_kind=CircuitKind(kind),
        circuit_id=circuit_id,
        actor=actor,
    )


def _require_control_topic(settings: Settings) -> None:
    # Said at once: a write to a missing topic would only time out, 30 s later.
    topic = settings.kafka.topic("control")
    if topic not in describe_topics(settings.kafka):
        raise KafkaAdminError(
            f"topic {topic} does not exist on {settings.kafka.bootstrap_servers} "
            "(create it with `faultstream topics create`)"
        )


def _publish(settings: Settings, records: list[Operator]) -> None:
    for record in records:
        publish_control(record, settings.kafka)
        print(
            f"{record.action.value} {record.circuit_kind.value}:{_text(record.circuit_id)} "
            f"by {record.actor} ({record.event_id})",
            flush=True,
        )
