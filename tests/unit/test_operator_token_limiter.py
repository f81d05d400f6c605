"""Operator-token guesses on the dashboard are limited: after a few wrong tokens a client is
refused, without its token being looked at, for a delay that doubles with every further
wrong one; a right token clears it. The clock is a fake: nothing here waits."""

from __future__ import annotations

import pytest

from faultstream.dashboard.operations import (
    GuessLimiter,
    OperationRefusedError,
    check_operator,
)

TOKEN = "s3cret"
SESSION = ("session:a", "address:10.0.0.1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> GuessLimiter:
    return GuessLimiter(free=5, base_delay_s=2.0, max_delay_s=60.0, clock=clock)


def attempt(limiter: GuessLimiter, token: str, client: tuple[str, ...] = SESSION) -> str:
    try:
        return check_operator(TOKEN, token, "alice", limiter=limiter, client=client)
    except OperationRefusedError as exc:
        return str(exc)


def test_five_wrong_tokens_are_answered_then_the_client_waits(limiter: GuessLimiter) -> None:
    for _ in range(5):
        assert attempt(limiter, "guess") == "operator token: missing or wrong"
    assert limiter.wait_s(SESSION) == 0
    assert attempt(limiter, "guess") == "operator token: missing or wrong"  # the 6th
    # Now even the right token is refused: it is not compared while the client waits.
    assert attempt(limiter, TOKEN) == "too many wrong operator tokens: try again in 2 s"


def test_the_delay_doubles_with_each_wrong_token_up_to_the_cap(
    limiter: GuessLimiter, clock: FakeClock
) -> None:
    for _ in range(5):
        attempt(limiter, "guess")
    delays = []
    for _ in range(8):
        attempt(limiter, "guess")
        delays.append(limiter.wait_s(SESSION))
        clock.now += delays[-1]  # wait it out, then guess again
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_the_right_token_after_the_delay_passes_and_clears_the_count(
    limiter: GuessLimiter, clock: FakeClock
) -> None:
    for _ in range(6):
        attempt(limiter, "guess")
    clock.now += 2.0
    assert attempt(limiter, TOKEN) == "dashboard:alice"
    for _ in range(5):  # a fresh allowance
        assert attempt(limiter, "guess") == "operator token: missing or wrong"
    assert limiter.wait_s(SESSION) == 0


def test_a_new_session_from_the_same_address_does_not_start_from_zero(
    limiter: GuessLimiter,
) -> None:
    for _ in range(6):
        attempt(limiter, "guess")
    other_session = ("session:b", "address:10.0.0.1")
    assert attempt(limiter, TOKEN, other_session).startswith("too many wrong operator tokens")
    elsewhere = ("session:c", "address:10.0.0.2")
    assert attempt(limiter, TOKEN, elsewhere) == "dashboard:alice"


def test_an_empty_token_field_is_no_guess(limiter: GuessLimiter) -> None:
    for _ in range(10):
        assert attempt(limiter, "") == "operator token: missing or wrong"
    assert limiter.wait_s(SESSION) == 0
    assert attempt(limiter, TOKEN) == "dashboard:alice"
