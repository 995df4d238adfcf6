"""Per-tenant quotas of the test stack (WANQ_QUOTAS_TENANTS). The admin tenant, which every `api`
fixture request uses, is practically unlimited; each other tenant belongs to one test module."""

from __future__ import annotations

ADMIN = "admin"
FAIR_A, FAIR_B = "fair-a", "fair-b"  # tests/e2e/test_fairness.py
SMALL = "quota-small"  # tests/e2e/test_dispatch.py: a short queue and small jobs
RPM = "quota-rpm"  # tests/api/test_quotas.py
ONE_AT_A_TIME = "quota-one"  # tests/e2e/test_dispatch.py

UNLIMITED = {"max_queued_jobs": 10_000, "requests_per_minute": 1_000_000}
TENANT_QUOTAS: dict[str, dict[str, int | float]] = {
    ADMIN: UNLIMITED,
    FAIR_A: UNLIMITED,
    FAIR_B: UNLIMITED,
    SMALL: {"max_queued_jobs": 2, "max_pixel_frames": 64 * 64 * 9, "requests_per_minute": 100_000},
    RPM: {"requests_per_minute": 5},
    ONE_AT_A_TIME: {"max_running_jobs": 1, "requests_per_minute": 100_000},
}
