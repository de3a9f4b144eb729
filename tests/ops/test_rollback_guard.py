"""Rollback refuses before stopping anything when the source is not ready for it (issue 13, item 5): unreachable,
its database down, or — after a switch — out of maintenance mode (it may have taken writes of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.server import ServerProcess
from tests.ops.conftest import APP_ADMIN
from tests.support import PASSWORD, Services, free_port
from timetodo.ops.errors import EXIT_REFUSED, EXIT_UNREACHABLE, StepError
from timetodo.ops.migrate.rollback import check_source
from timetodo.ops.migrate.source_api import SourceApi


async def test_rollback_needs_a_frozen_reachable_source(
    app_server: tuple[ServerProcess, Path], services: Services
) -> None:
    app, _ = app_server
    services_database = services.postgres_url
    api = SourceApi(app.url, email=APP_ADMIN, password=PASSWORD, token=None)
    try:
        await api.maintenance(False)
        with pytest.raises(StepError) as thawed:
            await check_source(api, services_database, switched=True)
        assert thawed.value.exit_code == EXIT_REFUSED and "out of maintenance" in str(thawed.value)
        await check_source(api, services_database, switched=False)  # no switch yet: nothing to protect

        await api.maintenance(True, "test")
        await check_source(api, services_database, switched=True)
        with pytest.raises(StepError) as no_db:
            await check_source(api, f"postgresql://app:pw@127.0.0.1:{free_port()}/app", switched=True)
        assert no_db.value.exit_code == EXIT_UNREACHABLE
    finally:
        await api.maintenance(False)
        await api.close()
    gone = SourceApi(f"http://127.0.0.1:{free_port()}", email=APP_ADMIN, password=PASSWORD, token=None)
    try:
        with pytest.raises(StepError) as unreachable:
            await check_source(gone, services_database, switched=True)
        assert unreachable.value.exit_code == EXIT_UNREACHABLE
    finally:
        await gone.close()
