"""One measurement in a fresh interpreter, so its RSS is its own: `python -m benchmarks.child NAME JSON`.

Prints `RESULT <json>` as its last stdout line; progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def _runners() -> dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]]:
    from benchmarks import scale

    return {"scale-relay": scale.relay_child, "scale-naive": scale.naive_child}


def main() -> None:
    name, raw = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.WARNING, format="    %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Runtime.stop() shuts APScheduler down with wait=False, which cancels a tick in progress and
    # logs it as "Error running job poll … CancelledError": expected here, reported separately.
    logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)
    result = asyncio.run(_runners()[name](json.loads(raw)))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
