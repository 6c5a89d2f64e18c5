"""Entry point of `persister` and `python -m worker`."""

import gc
import signal
import sys
import time
from types import FrameType


def _stop_while_importing(signum: int, _frame: FrameType | None) -> None:
    # Nothing has been read yet, so nothing is left undone: a clean exit.
    sys.exit(0)


def main() -> None:
    first_code = time.monotonic()
    # Importing takes most of a second; a SIGTERM then (a replica scaled down
    # as it starts) is not a failure. Afterwards the default applies until a
    # command installs its own handlers (`run` does, to flush first).
    signal.signal(signal.SIGTERM, _stop_while_importing)
    # Imports make long-lived objects only: the collector's passes over them
    # while they run find next to nothing (a tenth of a second on 2 cores).
    # Frozen afterwards, no later collection walks them again.
    gc.disable()
    from worker.core.startup import clock

    clock.start(first_code)
    from worker.cli import run_app

    gc.freeze()
    gc.enable()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(run_app(sys.argv[1:]))


if __name__ == "__main__":
    main()
