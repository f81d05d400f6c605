"""The tuner's table: the current settings beside the best ones and the top few."""

from __future__ import annotations

from .runner import Result
from .session import TuneRound


def format_round(outcome: TuneRound, top: int = 5) -> str:
    names = list(outcome.current.candidate.changes) if outcome.current else []
    header = ["", *names, "protected", "withheld", "delay_s", "open_h", "flaps", "score"]
    rows: list[list[str]] = []
    if outcome.current is not None:
        rows.append(_row("current", names, outcome.current))
    for rank, result in enumerate(outcome.results[:top], start=1):
        rows.append(_row("best" if rank == 1 else f"#{rank}", names, result))
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
        for line in (header, *rows)
    ]
    lines.append(
        f"{len(outcome.results)} configurations on {outcome.events} events"
        + (f", {len(outcome.rejected)} rejected" if outcome.rejected else "")
    )
    for rejected in outcome.rejected:
        shown = ", ".join(f"{k}={v}" for k, v in rejected.changes.items())
        lines.append(f"skipped {shown}: {rejected.reason}")
    return "\n".join(lines)


def _row(label: str, names: list[str], result: Result) -> list[str]:
    score = result.score
    return [
        label,
        *(
            f"{result.candidate.changes[n]:g}"
            if isinstance(result.candidate.changes[n], float)
            else str(result.candidate.changes[n])
            for n in names
        ),
        str(score.protected),
        str(score.withheld),
        f"{score.detection_delay_s:.1f}",
        f"{score.open_time_s / 3600:.2f}",
        str(score.flapping),
        f"{result.total:.2f}",
    ]
