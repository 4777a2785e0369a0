"""Errors the service layer raises; the app turns each into a GA4GH error body with its status."""

from __future__ import annotations


class ServiceError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404


class Forbidden(ServiceError):
    status = 403


class Conflict(ServiceError):
    """Not in the resource's present state (e.g. the crate of a run that has not ended)."""

    status = 409


class PayloadTooLarge(ServiceError):
    status = 413


class TooManyRequests(ServiceError):
    """A per-user limit (active tasks, request rate) is reached; `retry_after` seconds, if known."""

    status = 429

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
