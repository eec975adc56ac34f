"""Client failures are stored as one clean line; the full text goes to failures.log."""

from __future__ import annotations

from pathlib import Path

from fedadamw.run.failures import MAX_REASON, FailureLog, clean, is_lost_worker, summary

RAY_TRACEBACK = (
    "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing "
    "this task.\n\tclass_name: ClientAppActor\n\tactor_id: e81d640e27b3875ec37cdef901000000\n"
    "\tpid: 12605\nThe actor is dead because its worker process has died. Worker exit type: "
    "SYSTEM_ERROR " + "x" * 900 + "'>"
)
CLIENT_TRACEBACK = (
    "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\n"
    "Exception ClientAppException occurred. Message: \n"
    "\x1b[91mTraceback (most recent call last):\x1b[0m\n"
    '  File "clients/app.py", line 40, in train\n'
    "    result = train_local(model, data, task.train)\n"
    "ValueError: partition 3 has no training examples'>"
)


def test_flower_reasons_become_the_exception_line() -> None:
    assert summary(RAY_TRACEBACK).startswith("ActorDiedError: The actor died unexpectedly")
    assert summary(CLIENT_TRACEBACK) == "ValueError: partition 3 has no training examples"


def test_a_line_is_bounded_and_has_no_control_characters() -> None:
    one = summary("boom \x1b[31mred\x1b[0m\tand\x07bell " + "y" * 500)
    assert len(one) == MAX_REASON and one.endswith("…")
    assert one.startswith("boom red and bell y")
    assert all(ch >= " " for ch in one)
    assert clean("a\r\nb\x00c") == "a b c"


def test_the_log_keeps_the_whole_text_and_the_line_names_it(tmp_path: Path) -> None:
    log = FailureLog(tmp_path)
    line = log.reason(RAY_TRACEBACK, "e:coupled:1", 4, 2)
    assert len(line) <= MAX_REASON and "\n" not in line
    assert line.endswith("(full text: failures.log)")
    text = (tmp_path / "failures.log").read_text()
    assert "=== " in text and "run e:coupled:1 round 4 partition 2" in text
    assert "x" * 900 in text  # nothing cut from the log
    assert log.reason("simulated dropout (dropout-rate=0.5)", "r", 1, 0) == (
        "simulated dropout (dropout-rate=0.5)"
    )  # short and clean: stored as it is, not logged
    assert (tmp_path / "failures.log").read_text() == text


def test_lost_workers_are_told_apart_from_client_errors() -> None:
    assert is_lost_worker(RAY_TRACEBACK)
    assert not is_lost_worker(CLIENT_TRACEBACK)
    assert not is_lost_worker("Node Unavailable")  # a deployed SuperNode: a rejection
