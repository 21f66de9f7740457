"""`bindings.smtp` (output, operation `create`): send an e-mail, as Dapr's SMTP binding does.

Component metadata `host`, `port`, `user`/`password` (both or neither), `skipTLSVerify`, and defaults
for `emailFrom`, `emailTo`, `emailCC`, `emailBCC`, `subject`, `priority` (1-5, default 3) that the
request metadata overrides. Address lists are ';'-separated. The body is sent as text/html; a quoted
JSON string is unquoted first. STARTTLS is used when the server offers it; port 465 is implicit TLS.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Driver, meta_get

__all__ = ["DRIVER", "SmtpBinding"]

_FIELDS = ("emailFrom", "emailTo", "emailCC", "emailBCC", "subject", "priority")
TIMEOUT = 30.0


@dataclass(frozen=True)
class _Server:
    host: str
    port: int
    user: str
    password: str
    skip_tls_verify: bool


def _addresses(text: str) -> list[str]:
    return [address.strip() for address in text.split(";") if address.strip()]


def _priority(text: str) -> int:
    if not text:
        return 3
    if not text.isdigit() or not 1 <= int(text) <= 5:
        raise ValueError(f"priority must be a number from 1 to 5, got {text!r}")
    return int(text)


def _body(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    if text.startswith('"'):
        try:
            unquoted = json.loads(text)
        except json.JSONDecodeError:
            return text
        return unquoted if isinstance(unquoted, str) else text
    return text


class SmtpBinding:
    """Each `create` opens one SMTP session in a worker thread (smtplib is blocking)."""

    operations: tuple[str, ...] = ("create",)

    def __init__(self, name: str, server: _Server, defaults: dict[str, str]) -> None:
        self.name = name
        self.server = server
        self.defaults = defaults

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> SmtpBinding:
        server = _Server(
            meta_get(metadata, "host"),
            int(meta_get(metadata, "port")),
            meta_get(metadata, "user"),
            meta_get(metadata, "password"),
            meta_get(metadata, "skipTLSVerify").lower() == "true",
        )
        return cls(name, server, {field: meta_get(metadata, field) for field in _FIELDS})

    async def invoke(
        self, operation: str, data: bytes, metadata: Mapping[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        merged = {field: meta_get(metadata, field) or self.defaults[field] for field in _FIELDS}
        for required in ("emailFrom", "emailTo", "subject"):
            if not merged[required]:
                raise ComponentError(f"smtp binding error: {required} is required")
        try:
            message = self._message(merged, data)
        except ValueError as err:
            raise ComponentError(f"smtp binding error: {err}") from None
        await asyncio.to_thread(self._send, message)
        return b"", {}

    @staticmethod
    def _message(fields: dict[str, str], data: bytes) -> EmailMessage:
        message = EmailMessage()
        message["From"] = fields["emailFrom"]
        message["To"] = ", ".join(_addresses(fields["emailTo"]))
        if cc := _addresses(fields["emailCC"]):
            message["Cc"] = ", ".join(cc)
        message["Subject"] = fields["subject"]
        message["X-Priority"] = str(_priority(fields["priority"]))
        message.set_content(_body(data), subtype="html")
        bcc = _addresses(fields["emailBCC"])
        if bcc:
            message["Bcc"] = ", ".join(bcc)  # smtplib sends to Bcc and strips the header
        return message

    def _send(self, message: EmailMessage) -> None:
        server = self.server
        context = ssl.create_default_context()
        if server.skip_tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            if server.port == 465:
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    server.host, server.port, timeout=TIMEOUT, context=context
                )
            else:
                client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
            with client:
                client.ehlo()
                if server.port != 465 and client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                if server.user:
                    client.login(server.user, server.password)
                client.send_message(message)
        except (smtplib.SMTPException, OSError) as err:
            raise ComponentError(f"error from smtp binding, sending email failed: {err}") from None

    async def close(self) -> None:
        """Nothing is kept open between sends."""


def _check(metadata: Mapping[str, str]) -> None:
    port = meta_get(metadata, "port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidMetadata("port", f"expected a port number, got {port!r}")
    if bool(meta_get(metadata, "user")) != bool(meta_get(metadata, "password")):
        raise InvalidMetadata("user", "user and password must be given together (or neither)")
    try:
        _priority(meta_get(metadata, "priority"))
    except ValueError as err:
        raise InvalidMetadata("priority", str(err)) from None


DRIVER = Driver(
    kind="bindings", versions=("v1",), required=("host", "port"), check=_check, open=SmtpBinding.open
)
