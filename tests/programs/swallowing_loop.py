"""A stage whose loop stands for library code that swallows a signal's exception (a bare `except:`) or
turns it into another error; run by tests/test_errors.py (copied as stage.py) as

    python stage.py SIGTERM|SIGINT pass|systemerror poll|nopoll

At step 3 it sends itself the signal; `poll` calls errors.stop_if_signalled() after every step."""

import os
import signal
import sys
import time

from vaepipe.errors import stop_if_signalled
from vaepipe.process import run_stage

SIGNAL, SWALLOW, POLL = sys.argv[1], sys.argv[2], sys.argv[3] == "poll"


def main():
    for step in range(200):
        try:  # like a library's bare `except:` around whatever the signal interrupts
            if step == 3:
                os.kill(os.getpid(), signal.Signals[SIGNAL])
            time.sleep(0.01)
        except:  # noqa: E722
            if SWALLOW == "systemerror":
                raise SystemError("bad argument") from None
        if POLL:
            stop_if_signalled()
        print("step", step, flush=True)
    print("finished", flush=True)


run_stage(main)
