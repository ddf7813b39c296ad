"""``relay status``'s table: back-off shown with its next attempt, long errors wrapped."""

from __future__ import annotations

from typing import Any

from relay.statusview import ERROR_WIDTH, render


def answer(**host: Any) -> dict[str, Any]:
    return {
        "daemon": {"version": "x", "pid": 1, "uptime_s": 5, "fds": 3, "tasks": 2, "socket": "s"},
        "hosts": [
            {
                "name": "cluster",
                "hostname": "login.example.org",
                "port": 2222,
                "user": "ada",
                "state": "connected",
                "since": 100.0,
                "kernels": 0,
                **host,
            }
        ],
        "kernels": [],
    }


def test_the_resolved_target_is_shown() -> None:
    assert "ada@login.example.org:2222" in render(answer(), now=110.0)


def test_backing_off_says_when_it_tries_again_and_why() -> None:
    error = "cannot connect to login.example.org:2222: connection refused " * 3
    text = render(answer(state="backing-off", retry_at=130.0, last_error=error), now=110.0)
    assert "backing-off (retry in 20s)" in text
    lines = text.splitlines()
    assert all(len(line) < 200 for line in lines)
    wrapped = [line for line in lines if "connection refused" in line]
    assert len(wrapped) >= 3  # continued on rows of its own, under the LAST ERROR column
    column = lines[3].index("LAST ERROR")
    assert all(line[column:].strip() and len(line[column:]) <= ERROR_WIDTH for line in wrapped)
