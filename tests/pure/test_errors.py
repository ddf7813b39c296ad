"""relay.errors' one-line messages where they choose their words by what happened."""

from __future__ import annotations

import errno
import os

import pytest

from relay.errors import cannot_write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_a_quota_reached_is_said_in_words_with_the_way_out(code: int) -> None:
    """Over quota is a full file system to its user: the same words and the same way out
    (a home directory's quota is the common case on a shared login node)."""
    said = cannot_write("the lock file /x/lock", OSError(code, os.strerror(code)), "(or Y)")
    assert said.message == (
        "cannot write the lock file /x/lock: no space left on its file system; "
        "free some space there (or Y)"
    )


def test_another_failure_is_said_as_the_system_says_it() -> None:
    said = cannot_write("the lock file /x/lock", PermissionError(errno.EACCES, "Permission denied"))
    assert said.message == "cannot write the lock file /x/lock: Permission denied"
