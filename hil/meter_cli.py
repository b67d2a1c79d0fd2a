"""The meterfw CLI run against a rig's meter as an operator runs it, for tests that check what the
user sees: exit codes and --json output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MFW = str(Path(sys.executable).parent / "meterfw")


def cli(board, *args, timeout_s: float = 240) -> tuple[int, str, str]:
    proc = subprocess.run([MFW, "--port", board.port, "--keys", str(board.keys_dir), *args],
                          capture_output=True, text=True, timeout=timeout_s)
    return proc.returncode, proc.stdout, proc.stderr


def upgrade(board, image, *extra) -> tuple[int, dict]:
    """`meterfw upgrade IMAGE --when now --json`: its exit code and report."""
    rc, out, err = cli(board, "upgrade", str(image), "--when", "now", "--json", *extra)
    assert out, err
    return rc, json.loads(out)


def status(board) -> dict:
    rc, out, err = cli(board, "status", "--json")
    assert rc == 0, err
    return json.loads(out)


def events(board) -> list[dict]:
    rc, out, err = cli(board, "log", "--json")
    assert rc == 0, err
    return json.loads(out)
