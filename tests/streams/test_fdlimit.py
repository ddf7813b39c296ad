"""relay.fdlimit and what relay says once this process is out of open files: never that
another user took a connection, and never that the front end is not listening (a review's
reproduction at about 120 kernels under a soft limit of 256)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from relay import fdlimit
from relay.peerowner import NO_FILES, has_proc_net
from relay.ssh.guard import unreachable

# run in a child of its own: it lowers its limit and uses every file it has
_AT_THE_LIMIT = textwrap.dedent(
    """
    import json, os, resource, socket, sys
    from relay import fdlimit
    from relay.peerowner import linux_owner, linux_taker
    from relay.ssh.guard import taken_over
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    ends = client.getsockname()[1], server.getsockname()[1]
    used = len(os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 8, hard))
    filler = []
    try:
        while True:
            filler.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    taker = linux_taker(ends[1], ends[0])
    said = {
        "exhausted": fdlimit.exhausted(),
        "owner": linux_owner(*ends),
        "taker": taker,
        "taken_over": taken_over(ends[1], "data channel of 1@a,2@a", taker).message,
    }
    for fd in filler:
        os.close(fd)
    said["freed"] = fdlimit.exhausted()
    said["owner_after"] = linux_owner(*ends)
    said["taker_after"] = linux_taker(ends[1], ends[0])
    print(json.dumps(said))
    """
)


@pytest.mark.skipif(not has_proc_net(), reason="no /proc/net/tcp on this machine")
def test_at_the_limit_the_owner_is_not_read_as_gone_and_the_refusal_names_the_limit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _AT_THE_LIMIT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    said = json.loads(out.stdout)
    assert said["exhausted"] is True and said["freed"] is False
    assert said["owner"] == NO_FILES and said["taker"] == NO_FILES, said  # not GONE
    assert said["owner_after"] == os.getuid() == said["taker_after"], said
    line = said["taken_over"]
    assert "out of open files" in line and "another user" not in line, line
    assert "ulimit -n" in line and "\n" not in line, line


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])  # this process's, the machine's
def test_a_connect_that_failed_for_want_of_files_says_so_not_that_nobody_listens(
    code: int,
) -> None:
    emfile = unreachable("127.0.0.1", 4000, "data channel of 1@a,2@a", OSError(code, "x"))
    assert "out of open files" in emfile.message and "not listening" not in emfile.message
    assert "4000" in emfile.message and "\n" not in emfile.message
    # the limit reached is named, so its reader knows what to raise it from
    assert f"(ulimit -n: {fdlimit.soft_limit()})" in emfile.message, emfile.message
    refused = unreachable(
        "127.0.0.1",
        4000,
        "data channel of 1@a,2@a",
        ConnectionRefusedError(errno.ECONNREFUSED, "x"),
    )
    assert "not listening on 127.0.0.1:4000" in refused.message, refused.message


_RAISED = textwrap.dedent(
    """
    import json, resource, sys
    from relay import fdlimit
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    first = fdlimit.raise_soft_limit(int(sys.argv[1]))
    again = fdlimit.raise_soft_limit(int(sys.argv[1]))
    print(json.dumps([first, again, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard]))
    """
)


@pytest.mark.parametrize("wanted", [128, 1 << 30])
def test_the_soft_limit_is_raised_towards_the_hard_one_once(wanted: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _RAISED, str(wanted)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    first, again, soft, hard = json.loads(out.stdout)
    expected = wanted if hard == -1 else min(hard, wanted)  # RLIM_INFINITY reads -1 here
    assert first == [64, expected] and soft == expected, (first, soft, hard)
    assert again is None  # as high already: nothing to do
    assert fdlimit.exhausted() is False
