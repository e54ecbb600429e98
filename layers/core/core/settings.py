"""Settings read once, at cold start, from the environment the template gives each function."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob the functions read. Names match the template's environment variables."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    users_table: str = Field(default="UsersTable")
    contacts_table: str = Field(default="ContactsTable")
    templates_table: str = Field(default="TemplatesTable")
    senders_table: str = Field(default="SendersTable")
    services_table: str = Field(default="ServicesTable")
    service_usage_table: str = Field(default="ServiceUsageTable")
    tasks_table: str = Field(default="TasksTable")
    subtasks_table: str = Field(default="SubtasksTable")
    scheduler_state_table: str = Field(default="SchedulerStateTable")
    sender_identities_table: str = Field(default="SenderIdentitiesTable")
    suppressions_table: str = Field(default="SuppressionsTable")
    reputation_table: str = Field(default="ReputationTable")
    imports_table: str = Field(default="ImportsTable")
    # Bulk CSV imports (core.audience.imports): the uploads bucket, the queue of S3 events and
    # continuations, how much one chunk commits at a time, and when an invocation hands over.
    import_bucket: str = Field(default="")
    import_queue_url: str = Field(default="")
    import_chunk_rows: int = Field(default=1000, ge=1, le=20_000)
    import_safety_margin_seconds: float = Field(default=60.0, ge=0)
    # Powertools Idempotency's persistence table (Idempotency-Key on creating POSTs).
    idempotency_table: str = Field(default="IdempotencyTable")
    planner_queue_url: str = Field(default="")

    # EventBridge Scheduler: one schedule per email service invokes the dispatcher (the paced one
    # for services at most 10/s: core.dispatch.tiers).
    dispatcher_function_arn: str = Field(default="")
    paced_dispatcher_function_arn: str = Field(default="")
    scheduler_role_arn: str = Field(default="")
    schedule_group: str = Field(default="default")
    dispatch_dead_letter_queue_arn: str = Field(default="")
    dispatcher_budget_seconds: float = Field(default=240.0, gt=0, le=840)
    # The dispatch wake-up queue (core.dispatch.wakeups): prompt starts and hand-offs.
    dispatch_wake_queue_url: str = Field(default="")
    paced_dispatch_wake_queue_url: str = Field(default="")
    # A dispatcher starts its successor this long before its budget ends (cold start, queue delay).
    dispatcher_handoff_lead_seconds: float = Field(default=5.0, ge=0, le=60)

    # One-click unsubscribe links (RFC 8058) carried in every campaign email.
    unsubscribe_base_url: str = Field(default="http://127.0.0.1:3000/unsubscribe")
    unsubscribe_signing_key: str = Field(default="local-development-signing-key-change-me")
    # In AWS the key lives in Secrets Manager; when this names a secret, its value replaces
    # `unsubscribe_signing_key` at cold start.
    unsubscribe_signing_key_secret_arn: str = Field(default="")

    # Wall-clock budget for rendering one email (subject, html and text together).
    render_budget_ms: int = Field(default=200, ge=10, le=10_000)

    # Each new sender makes SES mail a verification link: at most this many per user per hour.
    sender_creations_per_hour: int = Field(default=20, ge=1)

    max_retries: int = Field(default=3, ge=0)
    retry_delay_seconds: int = Field(default=60, ge=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    health_check_interval_minutes: int = Field(default=60, ge=1)

    # The planner stops starting new chunks this many seconds before Lambda's deadline.
    planner_safety_margin_seconds: float = Field(default=20.0, ge=0)
    # Contacts the planner reads per chunk (one Query each).
    planner_page_size: int = Field(default=2000, ge=1, le=5000)
    # A planner lease outlives the longest possible invocation, so a stale holder is surely dead.
    planner_lease_seconds: float = Field(default=330.0, gt=0)


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    return Settings()
