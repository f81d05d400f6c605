"""The alert rules (docs/circuits.md "Alerts"): one scenario per rule, each written to fail
when that rule alone is broken; FIRING once until RESOLVED, with the same alert_id."""

from __future__ import annotations

from hashlib import blake2b

import pytest
from histories import History, alerts, commands, core_settings, run, without_alerts

from faultstream.events.models import Alert, CircuitStateChanged, RecoveryCommand
from faultstream.processors.core import FleetCore

START = 1_764_355_200_000


def summary(outputs: list) -> list[tuple[str, str, str, str]]:
    """(rule, subject, state, severity) of each alert."""
    return [(a.rule, a.subject_id, a.state, a.severity) for a in alerts(outputs)]


def only(rule: str, **changes) -> dict:
    """Every alert rule off but `rule` (given its setting in `changes`)."""
    rules = {
        "class_capacity_below": 0,
        "open_longer_than_s": 0,
        "escalations": False,
        "fleet_health_below": 0,
        "clock_skew": False,
    }
    return {"alerts": {**rules, **changes}}


# --- class capacity -------------------------------------------------------------------------


def test_capacity_below_the_threshold_fires_critical_and_resolves_with_the_same_id() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    for worker in ("w1", "w2", "w3"):
        h.heartbeat(worker, START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # 2 of 3: 67 %
    assert summary(h.run(settings)) == []
    h.operator("FORCE_OPEN", "worker", "w2", START + 2)  # 1 of 3: 33 %
    h.operator("FORCE_OPEN", "worker", "w3", START + 3)  # 0 of 3: already firing
    h.operator("RESET", "worker", "w1", START + 4)  # 1 of 3
    h.operator("RESET", "worker", "w2", START + 5)  # 2 of 3: resolved
    outputs = h.run(settings)
    assert summary(outputs) == [
        ("class_capacity_below", "cuda", "FIRING", "critical"),
        ("class_capacity_below", "cuda", "RESOLVED", "critical"),
    ]
    fired, resolved = alerts(outputs)
    assert (fired.ts, resolved.ts) == (START + 2, START + 5)
    assert fired.alert_id == resolved.alert_id and fired.subject_kind == "hardware_class"
    assert fired.message == "1 of 3 live cuda workers available, below 50%"


def test_an_open_class_circuit_leaves_it_no_capacity() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "hardware_class", "cuda", START + 1)
    assert summary(h.run(settings)) == [("class_capacity_below", "cuda", "FIRING", "critical")]


def test_a_class_whose_workers_are_all_lost_has_no_capacity() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("w1", START)
    h.heartbeat("c1", START + 20_000, hardware_class="cpu")
    h.tick(START + 31_000)  # w1 lost at +30 s
    outputs = h.run(settings)
    [fired] = alerts(outputs)
    assert (fired.subject_id, fired.ts, fired.message) == (
        "cuda",
        START + 30_000,
        "0 of 0 live cuda workers available, below 50%",
    )


def test_the_alert_follows_the_records_of_its_decision() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("w1", START)
    for i in range(5):
        h.failure("w1", START + i, "WORKER_CRASH", task_id=f"t{i}")
    last = run(h.records, settings)[-3:]  # the opening, its command, then the alert
    assert [type(o) for o in last] == [CircuitStateChanged, RecoveryCommand, Alert]


# --- circuits open too long -----------------------------------------------------------------


def test_a_circuit_not_closed_for_the_setting_fires_at_that_moment() -> None:
    settings = core_settings(
        **only("open_longer_than_s", open_longer_than_s=900),
        circuits={"task_type": {"failure_threshold": 1, "success_threshold": 1,
                                "half_open_max_calls": 1}},
    )  # fmt: skip
    h = History()
    h.failure("w1", START, "TIMEOUT", task_id="t1")  # task_type bert opens; half-opens +300 s
    h.failure("w1", START + 400_000, "TIMEOUT", task_id="t2")  # reopens (+360 s)
    h.tick(START + 899_999)
    assert summary(h.run(settings)) == []
    h.tick(START + 900_000)  # HALF_OPEN did not stop the clock
    h.success("w1", START + 1_000_000, task_id="t3")  # half-open at 760 s, closes now
    outputs = h.run(settings)
    assert summary(outputs) == [
        ("open_longer_than_s", "bert", "FIRING", "warning"),
        ("open_longer_than_s", "bert", "RESOLVED", "warning"),
    ]
    fired, resolved = alerts(outputs)
    assert (fired.ts, resolved.ts, fired.subject_kind) == (
        START + 900_000,
        START + 1_000_000,
        "task_type",
    )


# --- escalations ----------------------------------------------------------------------------


def test_an_escalation_fires_once_and_resolves_at_the_tasks_next_success() -> None:
    settings = core_settings(**only("escalations", escalations=True))
    h = History()
    h.failure("w1", START, "PERSISTENT_ERROR", task_id="t1")  # ladder: ESCALATION
    h.failure("w1", START + 1, "PERSISTENT_ERROR", task_id="t1", attempt=1)  # again
    h.success("w2", START + 2, task_id="t1", attempt=7)  # any attempt resolves
    outputs = h.run(settings)
    assert [c.strategy for c in commands(outputs)] == ["ESCALATION", "ESCALATION"]
    assert summary(outputs) == [
        ("escalations", "t1", "FIRING", "critical"),
        ("escalations", "t1", "RESOLVED", "critical"),
    ]
    assert alerts(outputs)[0].subject_kind == "task"


# --- fleet health ---------------------------------------------------------------------------


def test_fleet_health_below_the_threshold_fires_and_recovers() -> None:
    settings = core_settings(**only("fleet_health_below", fleet_health_below=70))
    h = History()
    h.heartbeat("w1", START)  # circuits: w1, cuda
    h.heartbeat("w2", START)  # w2: 3 circuits, health 100
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # 100 - 1/3 x 100 = 66.7
    h.operator("RESET", "worker", "w1", START + 2)
    outputs = h.run(settings)
    assert summary(outputs) == [
        ("fleet_health_below", "fleet", "FIRING", "warning"),
        ("fleet_health_below", "fleet", "RESOLVED", "warning"),
    ]
    assert alerts(outputs)[0].message == "overall health 66.6667, below 70"


# --- clock skew -----------------------------------------------------------------------------


def test_a_skewed_clock_fires_and_its_next_event_within_the_limit_resolves() -> None:
    settings = core_settings(**only("clock_skew", clock_skew=True))
    h = History()
    h.heartbeat("w1", START + 120_000, received_at=START)  # exactly 120 s: within
    h.heartbeat("w1", START + 130_000, received_at=START + 9_999)  # 120.001 s: over
    h.heartbeat("w1", START + 141_000, received_at=START + 20_000)  # again: nothing new
    h.heartbeat("w1", START + 30_000, received_at=START + 30_000)
    outputs = h.run(settings)
    assert summary(outputs) == [
        ("clock_skew", "w1", "FIRING", "warning"),
        ("clock_skew", "w1", "RESOLVED", "warning"),
    ]
    assert [a.ts for a in alerts(outputs)] == [START + 9_999, START + 30_000]


# --- switched on and off --------------------------------------------------------------------


def test_every_rule_at_zero_or_false_fires_nothing() -> None:
    settings = core_settings(**only("none"))
    h = History()
    h.heartbeat("w1", START + 500_000, received_at=START)
    h.failure("w1", START, "PERSISTENT_ERROR", task_id="t1")
    h.operator("FORCE_OPEN", "hardware_class", "cuda", START + 1)
    h.tick(START + 3_600_000)
    assert alerts(h.run(settings)) == []


def test_a_threshold_rule_switched_off_while_firing_resolves_at_once() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)
    h.config(START + 2, {"alerts": {"class_capacity_below": 0}})
    h.operator("FORCE_OPEN", "hardware_class", "cuda", START + 3)  # fires nothing new
    outputs = h.run(settings)
    assert summary(outputs) == [
        ("class_capacity_below", "cuda", "FIRING", "critical"),
        ("class_capacity_below", "cuda", "RESOLVED", "critical"),
    ]
    assert alerts(outputs)[1].ts == START + 2


def test_alerts_change_no_other_record() -> None:
    h = History()
    h.heartbeat("w1", START + 500_000, received_at=START)
    for i in range(6):
        h.failure("w1", START + i, "WORKER_CRASH", task_id=f"t{i}", attempt=i % 4)
    h.tick(START + 3_600_000)
    with_alerts = h.run()
    assert alerts(with_alerts)  # the defaults fire some
    assert without_alerts(with_alerts) == h.run(core_settings(**only("none")))


def test_a_snapshot_keeps_what_fires() -> None:
    settings = core_settings(**only("escalations", escalations=True))
    h = History()
    h.failure("w1", START, "PERSISTENT_ERROR", task_id="t1")
    core = FleetCore(settings)
    run(h.records, core=core)
    restored = FleetCore.restore(core.snapshot())
    resolved = restored.process(h.success("w1", START + 1, task_id="t1"))
    assert summary(resolved) == [("escalations", "t1", "RESOLVED", "critical")]


def test_a_skew_alert_switched_off_still_resolves_on_an_event_within_the_limit() -> None:
    settings = core_settings(**only("clock_skew", clock_skew=True))
    h = History()
    h.heartbeat("w1", START + 500_000, received_at=START)
    h.config(START + 1, {"alerts": {"clock_skew": False}})
    h.heartbeat("w1", START + 600_000, received_at=START + 2)  # still off: nothing
    h.heartbeat("w2", START + 600_000, received_at=START + 3)  # skewed, rule off: nothing
    h.heartbeat("w1", START + 4, received_at=START + 4)
    outputs = h.run(settings)
    assert [(a.subject_id, a.state, a.ts) for a in alerts(outputs)] == [
        ("w1", "FIRING", START),
        ("w1", "RESOLVED", START + 4),
    ]


# --- the book's ids and tasks ---------------------------------------------------------------


def test_a_task_named_like_a_worker_keeps_its_escalation_when_the_workers_alert_resolves() -> None:
    settings = core_settings(**only("escalations", escalations=True, clock_skew=True))
    h = History()
    h.failure("w2", START, "PERSISTENT_ERROR", task_id="w1")  # task "w1" escalated
    h.heartbeat("w1", START + 500_000, received_at=START + 1)  # worker "w1": skewed
    h.heartbeat("w1", START + 2, received_at=START + 2)  # and resolved
    h.success("w2", START + 3, task_id="w1")  # task "w1" succeeds: its escalation resolves
    assert [(a.rule, a.subject_id, a.state) for a in alerts(h.run(settings))] == [
        ("escalations", "w1", "FIRING"),
        ("clock_skew", "w1", "FIRING"),
        ("clock_skew", "w1", "RESOLVED"),
        ("escalations", "w1", "RESOLVED"),
    ]


def test_a_resolved_escalation_is_forgotten() -> None:
    settings = core_settings(**only("escalations", escalations=True))
    h = History()
    for i in range(3):
        h.failure("w1", START + i, "PERSISTENT_ERROR", task_id=f"t{i}")
    for i in range(3):
        h.success("w1", START + 10 + i, task_id=f"t{i}")
    core = FleetCore(settings)
    outputs = run(h.records, core=core)
    assert [a.state for a in alerts(outputs)] == ["FIRING"] * 3 + ["RESOLVED"] * 3
    # Nothing is kept for tasks that succeeded: an escalated task each, for ever, otherwise.
    assert (core._alerts.firing, core._alerts.tasks) == ({}, set())


def test_an_alert_id_is_derived_from_rule_subject_moment_and_input() -> None:
    """What a reprocessing repeats: the FIRING's rule, subject, ts and caused_by, hashed
    (spelled out here: blake2b, 8 bytes, of the parts joined by the unit separator)."""

    def alert_id(*parts: object) -> str:
        text = "\x1f".join(map(str, parts)).encode()
        return "alr-" + blake2b(text, digest_size=8).hexdigest()

    settings = core_settings(
        **only("escalations", escalations=True, clock_skew=True, class_capacity_below=50)
    )
    h = History()
    h.heartbeat("w1", START + 500_000, received_at=START)  # clock skew on w1
    h.failure("w1", START + 1, "PERSISTENT_ERROR", task_id="t1")  # escalation of t1
    h.operator("FORCE_OPEN", "worker", "w1", START + 2)  # no capacity left in cuda
    h.heartbeat("w1", START + 3, received_at=START + 3)
    h.success("w1", START + 4, task_id="t1")
    h.operator("RESET", "worker", "w1", START + 5)
    h.operator("FORCE_OPEN", "worker", "w1", START + 6)  # the same alert again: a new id
    outputs = alerts(h.run(settings))
    fired = {a.alert_id: a for a in outputs if a.state == "FIRING"}
    assert len(fired) == 4 and len(outputs) == 7
    for a in outputs:
        firing = fired[a.alert_id]  # a RESOLVED record carries its FIRING's id
        assert (firing.rule, firing.subject_id) == (a.rule, a.subject_id)
        assert a.alert_id == alert_id(
            a.rule, a.subject_kind, a.subject_id, firing.ts, firing.caused_by
        )


# --- thresholds to the edge -----------------------------------------------------------------


def test_capacity_exactly_at_the_threshold_is_not_below_it() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("w1", START)
    h.heartbeat("w2", START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # 1 of 2: 50 %, not below
    h.operator("FORCE_OPEN", "worker", "w2", START + 2)  # 0 of 2
    assert [(a.state, a.message, a.ts) for a in alerts(h.run(settings))] == [
        ("FIRING", "0 of 2 live cuda workers available, below 50%", START + 2)
    ]


def test_a_lost_class_resolves_when_a_worker_comes_back() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("w1", START)
    h.tick(START + 31_000)  # lost at +30 s: 0 live workers
    h.heartbeat("w1", START + 40_000)  # back
    assert [(a.state, a.message, a.ts) for a in alerts(h.run(settings))] == [
        ("FIRING", "0 of 0 live cuda workers available, below 50%", START + 30_000),
        ("RESOLVED", "1 of 1 live cuda workers available", START + 40_000),
    ]


def test_fleet_health_exactly_at_the_threshold_is_not_below_it() -> None:
    settings = core_settings(**only("fleet_health_below", fleet_health_below=75))
    h = History()
    for worker in ("w1", "w2", "w3"):  # 4 circuits with cuda
        h.heartbeat(worker, START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # 75: not below
    h.operator("FORCE_OPEN", "worker", "w2", START + 2)  # 50
    assert [(a.state, a.message, a.ts) for a in alerts(h.run(settings))] == [
        ("FIRING", "overall health 50, below 75", START + 2)
    ]


def test_a_skew_alert_says_by_how_much_and_within_what_it_is_back() -> None:
    settings = core_settings(**only("clock_skew", clock_skew=True))
    h = History()
    h.heartbeat("w1", START + 130_000, received_at=START)
    h.heartbeat("w1", START + 1_000, received_at=START + 1_000)
    assert [(a.state, a.message, a.ts) for a in alerts(h.run(settings))] == [
        ("FIRING", "worker w1's clock is +130s off the broker's", START),
        ("RESOLVED", "worker w1's clock is within 120s again", START + 1_000),
    ]


# --- circuits open too long, to the edge ----------------------------------------------------


def open_longer(seconds: float, **changes) -> dict:
    return core_settings(**only("open_longer_than_s", open_longer_than_s=seconds), **changes)


def test_an_outage_that_ended_does_not_fire_for_the_next_one() -> None:
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START)
    h.operator("RESET", "worker", "w1", START + 10_000)  # closed after 10 s
    h.operator("FORCE_OPEN", "worker", "w1", START + 30_000)  # a new outage
    h.tick(START + 61_000)  # the first outage's moment: the second is 31 s old
    assert alerts(h.run(open_longer(60))) == []
    h.tick(START + 91_000)
    assert [(a.state, a.ts) for a in alerts(h.run(open_longer(60)))] == [("FIRING", START + 90_000)]


def test_an_outage_timer_set_before_the_rule_was_switched_off_fires_nothing() -> None:
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START)
    h.config(START + 10_000, {"alerts": {"open_longer_than_s": 0}})
    h.tick(START + 61_000)
    assert alerts(h.run(open_longer(60))) == []


def test_an_outage_waits_for_the_setting_grown_meanwhile() -> None:
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START)
    h.config(START + 30_000, {"alerts": {"open_longer_than_s": 120}})
    h.tick(START + 61_000)  # the old moment: not yet
    assert alerts(h.run(open_longer(60))) == []
    h.tick(START + 121_000)
    assert [(a.state, a.ts, a.message) for a in alerts(h.run(open_longer(60)))] == [
        ("FIRING", START + 120_000, "worker circuit w1 not CLOSED for 120s")
    ]


@pytest.mark.parametrize("seconds", [60.0007, 60.0003])  # due at +60000.7 / +60000.3 ms
def test_a_fractional_setting_fires_at_its_millisecond_rounded_up_naming_it(seconds) -> None:
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START)
    tick = h.tick(START + 61_000)
    [fired] = alerts(h.run(open_longer(seconds)))
    assert (fired.state, fired.ts, fired.message, fired.caused_by) == (
        "FIRING",
        START + 60_001,
        f"worker circuit w1 not CLOSED for {seconds:g}s",
        tick.event_id,
    )


def test_an_outage_alert_precedes_what_fell_due_after_it() -> None:
    settings = open_longer(20, circuits={"worker": {"recovery_timeout_s": 30}})
    h = History()
    h.heartbeat("w1", START)
    for i in range(5):
        h.failure("w1", START + i, "WORKER_CRASH", task_id=f"t{i}")  # opens at +4 ms
    h.tick(START + 60_000)  # reveals the alert (+20 s) and the half-opening (+30 s)
    revealed = [o for o in h.run(settings) if isinstance(o, (Alert, CircuitStateChanged))]
    assert [(type(o).__name__, o.ts) for o in revealed[1:3]] == [
        ("Alert", START + 20_004),
        ("CircuitStateChanged", START + 30_004),
    ]


# --- clock skew, to the edge ----------------------------------------------------------------


def test_a_skewed_worker_back_at_exactly_the_limit_resolves() -> None:
    settings = core_settings(**only("clock_skew", clock_skew=True))
    h = History()
    h.heartbeat("w1", START + 130_000, received_at=START)
    h.heartbeat("w1", START + 121_000, received_at=START + 1_000)  # exactly 120 s: within
    assert [(a.state, a.ts) for a in alerts(h.run(settings))] == [
        ("FIRING", START),
        ("RESOLVED", START + 1_000),
    ]


def test_a_clock_that_skews_again_fires_a_new_alert() -> None:
    settings = core_settings(**only("clock_skew", clock_skew=True))
    h = History()
    h.heartbeat("w1", START + 130_000, received_at=START)
    h.heartbeat("w1", START + 1_000, received_at=START + 1_000)
    h.heartbeat("w1", START + 132_000, received_at=START + 2_000)
    fired = alerts(h.run(settings))
    assert [(a.state, a.ts) for a in fired] == [
        ("FIRING", START),
        ("RESOLVED", START + 1_000),
        ("FIRING", START + 2_000),
    ]
    assert fired[2].alert_id != fired[0].alert_id


def test_a_stale_outage_timer_holds_back_nothing_else_due() -> None:
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START)
    h.operator("RESET", "worker", "w1", START + 10_000)  # the +60 s timer goes stale
    h.heartbeat("z", START + 32_000)  # lost at +62 s
    h.heartbeat("w1", START + 55_000)
    core = FleetCore(open_longer(60))
    for record in h.records:
        core.process(record)
    core.process(h.tick(START + 70_000))  # the stale timer (+60 s) pops before z's (+62 s)
    assert core.workers_view()["z"]["status"] == "lost"


def test_an_outage_from_the_first_millisecond_follows_a_shorter_setting() -> None:
    h = History()
    h.heartbeat("w1", 0)
    h.operator("FORCE_OPEN", "worker", "w1", 0)  # an outage since ts 0
    h.config(1_000, {"alerts": {"open_longer_than_s": 5}})
    h.tick(6_000)
    assert [(a.state, a.ts) for a in alerts(h.run(open_longer(60)))] == [("FIRING", 5_000)]


def test_fleet_health_below_a_threshold_set_at_run_time_fires_at_once() -> None:
    h = History()
    h.heartbeat("w1", START)
    h.heartbeat("w2", START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # health 66.7: no rule yet
    change = h.config(START + 2, {"alerts": {"fleet_health_below": 70}})
    [fired] = alerts(h.run(core_settings(**only("fleet_health_below", fleet_health_below=0))))
    assert (fired.state, fired.ts, fired.caused_by) == ("FIRING", START + 2, change.event_id)


def test_an_outage_alert_fires_until_the_circuit_is_closed_again() -> None:
    settings = core_settings(
        **only("open_longer_than_s", open_longer_than_s=100),
        circuits={"task_type": {"failure_threshold": 1, "success_threshold": 1,
                                "half_open_max_calls": 1}},
    )  # fmt: skip
    h = History()
    h.failure("w1", START, "TIMEOUT", task_id="t1")  # bert opens; half-opens at +300 s
    h.tick(START + 350_000)  # fired at +100 s, and half-open since +300 s: still firing
    closing = h.success("w1", START + 400_000, task_id="t2")
    fired, resolved = alerts(h.run(settings))
    assert (fired.state, fired.ts) == ("FIRING", START + 100_000)
    assert (resolved.state, resolved.ts, resolved.caused_by, resolved.message) == (
        "RESOLVED",
        START + 400_000,
        closing.event_id,
        "task_type circuit bert is CLOSED again",
    )


def test_fleet_health_counts_a_half_open_circuit_as_four_tenths_open() -> None:
    settings = core_settings(**only("fleet_health_below", fleet_health_below=70))
    h = History()
    h.heartbeat("w2", START)  # circuits w2 and cuda; w1 and bert come with w1
    for i in range(5):
        h.failure("w1", START + 1 + i, "WORKER_CRASH", task_id=f"a{i}")  # 1 of 4 open: 75
    for i in range(5):  # w1 half-open since +60 s; w2 opens: (1 + 0.4) of 4: 65
        h.failure("w2", START + 70_000 + i, "WORKER_CRASH", task_id=f"b{i}")
    h.failure("w1", START + 80_000, "WORKER_CRASH", task_id="c")  # reopens: 2 of 4: 50
    h.operator("RESET", "worker", "w1", START + 90_000)  # 1 of 4: 75
    assert [(a.state, a.message) for a in alerts(h.run(settings))] == [
        ("FIRING", "overall health 65, below 70"),
        ("RESOLVED", "overall health 75"),
    ]


def test_capacity_switched_off_resolves_every_class_that_fired() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("a1", START, hardware_class="acls")  # acls: 1 of 1, never fires
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # cuda: 0 of 1
    h.config(START + 2, {"alerts": {"class_capacity_below": 0}})
    assert summary(h.run(settings)) == [
        ("class_capacity_below", "cuda", "FIRING", "critical"),
        ("class_capacity_below", "cuda", "RESOLVED", "critical"),
    ]


def test_every_class_an_input_changed_is_judged() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.heartbeat("a1", START, hardware_class="acls")
    h.heartbeat("m", START, hardware_class="acls")
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # cuda: 0 of 1
    h.heartbeat("m", START + 2)  # m moves to cuda: acls 1 of 1, unchanged; cuda 1 of 2
    outputs = h.run(settings)
    assert summary(outputs) == [
        ("class_capacity_below", "cuda", "FIRING", "critical"),
        ("class_capacity_below", "cuda", "RESOLVED", "critical"),
    ]
    assert alerts(outputs)[1].ts == START + 2


def test_a_class_known_only_by_its_circuit_has_no_capacity() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50))
    h = History()
    h.operator("FORCE_OPEN", "hardware_class", "rocm", START)
    [fired] = alerts(h.run(settings))
    assert (fired.subject_id, fired.message) == (
        "rocm",
        "0 of 0 live rocm workers available, below 50%",
    )


def test_capacity_just_below_a_fractional_threshold_fires() -> None:
    settings = core_settings(**only("class_capacity_below", class_capacity_below=50.5))
    h = History()
    h.heartbeat("w1", START)
    h.heartbeat("w2", START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # 1 of 2: 50 % < 50.5 %
    [fired] = alerts(h.run(settings))
    assert fired.message == "1 of 2 live cuda workers available, below 50.5%"


def test_a_clock_behind_the_brokers_fires_past_the_limit_not_at_it() -> None:
    settings = core_settings(**only("clock_skew", clock_skew=True))
    h = History()
    h.heartbeat("w1", START, received_at=START + 120_000)  # exactly 120 s behind: within
    late = h.heartbeat("w1", START + 1_000, received_at=START + 121_001)  # 120.001 s behind
    [fired] = alerts(h.run(settings))
    assert (fired.state, fired.caused_by, fired.message) == (
        "FIRING",
        late.event_id,
        "worker w1's clock is -120.001s off the broker's",
    )


def test_a_circuit_that_closed_again_fires_nothing_when_the_setting_changes() -> None:
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START)
    h.operator("RESET", "worker", "w1", START + 10_000)  # its outage is over
    h.config(START + 20_000, {"alerts": {"open_longer_than_s": 5}})
    h.tick(START + 100_000)
    assert alerts(h.run(open_longer(60))) == []


def test_fleet_health_recovers_as_healthy_workers_join() -> None:
    settings = core_settings(**only("fleet_health_below", fleet_health_below=70))
    h = History()
    h.heartbeat("w1", START)  # circuits w1, cuda
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)  # 1 of 2 open: 50
    h.heartbeat("w2", START + 2)  # 1 of 3: 66.7
    h.heartbeat("w3", START + 3)  # 1 of 4: 75
    assert [(a.state, a.ts, a.message) for a in alerts(h.run(settings))] == [
        ("FIRING", START + 1, "overall health 50, below 70"),
        ("RESOLVED", START + 3, "overall health 75"),
    ]
