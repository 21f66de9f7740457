"""Test kit for chassis services: real sidecar and app processes, free ports, polling, server checks.

The pytest plugin (`chassis.testing.plugin`) loads automatically and provides the fixtures
`chassis_service` (a service under test beside its sidecar, see docs/testing.md), `sidecar_factory`
and `app_factory`; the helpers below work with or without it.
"""

from chassis.testing._harness import CapturedEvent, ServiceUnderTest, StartService, TopicCapture
from chassis.testing._processes import (
    AppProcess,
    ManagedProcess,
    Sidecar,
    free_port,
    requires_server,
    wait_for,
    write_default_resources,
)

__all__ = [
    "AppProcess",
    "CapturedEvent",
    "ManagedProcess",
    "ServiceUnderTest",
    "Sidecar",
    "StartService",
    "TopicCapture",
    "free_port",
    "requires_server",
    "wait_for",
    "write_default_resources",
]
