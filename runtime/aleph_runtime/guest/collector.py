"""The cyclic garbage collector paused while modules load.

Importing a framework allocates hundreds of thousands of objects (pydantic models,
routes, dataclasses) and few of them are garbage; every 700 allocations the collector
walks the young ones, and its older generations grow with every module. Paused, the
init's own imports take about 10% less CPU and a FastAPI + aleph-sdk program's about
12% less (scripts/bench.sh; under emulation, a second of a cold start). Collection
resumes once the modules are in, and whatever garbage the imports left goes at the
next collection.

Paused by setting the first threshold to 0 (how `gc` spells "no automatic collection"),
not by gc.disable(): a program that calls gc.disable() or sets its own thresholds while
it is imported keeps its choice, since `resume` restores the thresholds only when they
are still the pause's.
"""

from __future__ import annotations

import gc


def pause() -> tuple[int, ...]:
    """Stop automatic collections; the thresholds to give `resume`."""
    saved = gc.get_threshold()
    gc.set_threshold(0)
    return saved


def resume(saved: tuple[int, ...]) -> None:
    if gc.get_threshold()[0] == 0:  # still our pause: the program set none of its own
        gc.set_threshold(*saved)
