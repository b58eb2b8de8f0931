"""The one Celery task: `vmorch.advance(job_id)`, which runs the job's next step."""

from __future__ import annotations

import os

from celery import Celery

from orchestrator.jobs.dispatch import ADVANCE_TASK
from orchestrator.settings import Settings
from tasks.runner.advance import advance
from tasks.runtime import Runtime


def register(app: Celery, settings: Settings) -> None:
    """Declare `vmorch.advance` on `app`. The runtime is built per process, after fork."""
    state: dict[int, Runtime] = {}

    def runtime() -> Runtime:
        rt = state.get(os.getpid())
        if rt is None:
            state.clear()
            rt = state[os.getpid()] = Runtime.build(settings)
        return rt

    @app.task(name=ADVANCE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def advance_task(job_id: str) -> str:
        return advance(runtime(), job_id)
