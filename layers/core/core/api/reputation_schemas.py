"""Replies of the reputation guard's admin routes (POST /api/users|services/{id}/resume-sending)."""

from __future__ import annotations

from pydantic import BaseModel


class UserSendingResumedOut(BaseModel):
    user_id: str
    cleared_hold: str | None  # the reason the hold had; None when a retry found it cleared already
    resumed_task_ids: list[str]  # tasks the hold had paused, now queued (or scheduled)
    window_buckets_reset: int  # hour buckets whose counts start from zero again


class ServiceSendingResumedOut(BaseModel):
    service_id: str
    cleared_hold: str
    window_buckets_reset: int
