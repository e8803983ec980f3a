"""Process entry point of the temporary Prefect API server: migrate the database, then serve on 127.0.0.1.

Prefect's server brings its database up to date when it starts, and its only guard is a lock
inside one process. Two commands started together on a fresh Prefect home both migrate the same
SQLite file, and one of them fails (alembic finds the version row already moved). Here the
migration runs first under a file lock in Prefect's home, so concurrent commands migrate one at a
time, and the later ones find the database up to date.

    python -m flows.temporary_server --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import sys

MIGRATION_LOCK = "capkv-migration.lock"
LOCK_TIMEOUT_S = 600.0


def migrate_database(timeout_s: float = LOCK_TIMEOUT_S) -> None:
    """Bring Prefect's database up to date, one process at a time, unless Prefect's settings turn that off."""
    from filelock import FileLock, Timeout
    from prefect.server.database import provide_database_interface
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if not settings.server.database.migrate_on_start:
        return
    lock_path = settings.home / MIGRATION_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(lock_path), timeout=timeout_s):
            asyncio.run(provide_database_interface().create_db())
    except Timeout:
        raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {lock_path}, held by another Prefect "
                         "server migrating the same database; stop that server or remove the lock file") from None


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    args = parser.parse_args(argv)

    migrate_database()
    # The app's own start-up migration then finds nothing to do.
    uvicorn.run("prefect.server.api.server:create_app", factory=True, host=args.host, port=args.port,
                log_level="error", lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
