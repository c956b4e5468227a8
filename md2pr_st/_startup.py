"""Ctrl-C while the ``md2pr`` command is still starting: exit code 130 and one line, not an import traceback.

Importing the package installs the handler only in the ``md2pr`` process itself (``sys.argv[0]`` is the ``md2pr``
script), never in a program that imports the library; :func:`started` hands Ctrl-C back to Python's own handler
once the command line can report an interruption itself (:func:`md2pr_st.cli.main`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _interrupted_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("md2pr: interrupted while starting; nothing was done.\n")
    raise SystemExit(130)


def started() -> None:
    """From here on, Ctrl-C raises ``KeyboardInterrupt`` again (the command line catches it)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_argv = getattr(sys, "argv", None) or [""]
if (
    os.path.basename(_argv[0]).removesuffix(".exe") == "md2pr"
    and threading.current_thread() is threading.main_thread()
):
    signal.signal(signal.SIGINT, _interrupted_while_starting)
