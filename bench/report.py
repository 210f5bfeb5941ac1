"""What the Python benchmark drivers share: the commit under test and a Markdown table."""

import os
import signal
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit():
    if os.environ.get("VAE_COMMIT"):  # a copy of a tree whose git metadata is not its own (gpu_check.sh)
        return os.environ["VAE_COMMIT"]
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True)
    return (r.stdout.strip() or "?") + ("+changes" if dirty.stdout.strip() else "")


def today():
    return time.strftime("%Y-%m-%d")


def markdown_table(head, rows):
    widths = [max(len(str(r[i])) for r in list(rows) + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


class Cut(Exception):
    """A time limit's SIGTERM (gpu_check.sh's budget) during the measurements."""


def cut_on_sigterm():
    """From here on SIGTERM raises Cut: the driver stops measuring (subprocess.run kills the run in
    flight), then calls measured() and writes what it has, so that a time limit costs the runs it
    cuts and not the ones already done."""
    def raise_cut(signum, frame):
        raise Cut(f"cut by signal {signum} (a time limit) before it finished")
    signal.signal(signal.SIGTERM, raise_cut)


def measured():
    """The measurements are over: a SIGTERM now no longer interrupts the writing of the results
    (a timeout's KILL still ends the process)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def median_epoch_seconds(epochs):
    """Median epoch time of the epochs after the first (the first pays for warm-up), or of all
    of them when there is only one."""
    timed = [m["epoch_seconds"] for m in epochs if m["epoch"] > 1] or [m["epoch_seconds"] for m in epochs]
    return statistics.median(timed)
