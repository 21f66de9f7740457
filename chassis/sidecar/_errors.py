"""Errors raised by the embedded sidecar's storage layer; the API servers map them to gRPC/HTTP codes.

SidecarError
├── ResourceError     a component YAML file is invalid ("<file>: <field>: <what is wrong>")
├── InvalidMetadata   one metadata value of a component is invalid (carries the field)
├── EtagMismatch      an ETag check failed              -> gRPC ABORTED / HTTP 409
├── EtagInvalid       an ETag is malformed              -> gRPC INVALID_ARGUMENT / HTTP 400
├── IllegalKey        a state key contains '||'         -> gRPC INVALID_ARGUMENT / HTTP 400
└── ComponentError    anything else a driver fails on   -> gRPC INTERNAL / HTTP 500
"""

from __future__ import annotations


class SidecarError(Exception):
    """Root of every error the sidecar's storage layer raises."""


class ResourceError(SidecarError):
    """A resource file is invalid; the message is one line naming the file and the field."""

    def __init__(self, source: object, field: str, problem: str) -> None:
        super().__init__(f"{source}: {field}: {problem}")
        self.source = str(source)
        self.field = field
        self.problem = problem


class InvalidMetadata(SidecarError):
    """A component metadata value is invalid; the loader turns it into a ResourceError."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class EtagMismatch(SidecarError):
    """The ETag (or first-write) condition of a state write did not hold."""


class EtagInvalid(SidecarError):
    """An ETag is not in the format the store understands."""


class IllegalKey(SidecarError):
    """A state key (or key prefix) contains Dapr's reserved separator '||'."""

    def __init__(self, key: str) -> None:
        # Same text as daprd, so clients matching on it keep working.
        super().__init__(f"input key/keyPrefix '{key}' can't contain '||'")
        self.key = key


class ComponentError(SidecarError):
    """A component failed for any other reason (I/O, closed store, bad request value)."""
