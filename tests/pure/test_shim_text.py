"""The shim's command line as text: a word that is not UTF-8 is refused before any request."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.lite import shim


def test_a_latin1_kernel_path_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under LC_ALL=C a Latin-1 path reaches the shim as surrogates: the shim died on encoding
    its request (a traceback), and once that could be sent the daemon refused it as "unable to
    parse raw data as a unicode string"."""
    monkeypatch.setenv("RELAY_SOCKET", str(tmp_path / "none.sock"))
    kernel = os.fsdecode(b"/opt/k\xe9rnel/WolframKernel")
    assert shim.main(["--no-autostart", "h", kernel, "2"]) == shim.EXIT_USAGE
    err = capsys.readouterr().err
    assert "kernel path '/opt/k\\xe9rnel/WolframKernel' is not UTF-8" in err
