"""The email family's errors: bad input is caught at enqueue time, SMTP outcomes decide retries."""

from __future__ import annotations

from jobs.errors import ConveyorError, InvalidInput, PermanentError, RetryableError


# --- Bad input: raised by the input models' validators, before anything is published. ---
class InvalidAddress(InvalidInput):
    """An email address is invalid."""


class InvalidHeader(InvalidInput):
    """A mail header is invalid (a line break, a reserved name, a bad character)."""


class TemplateNotFound(InvalidInput):
    """No mail template has that name."""


class TemplateVariableMissing(InvalidInput):
    """The template uses a variable the context does not give."""


class AttachmentRejected(InvalidInput):
    """An attachment is missing, outside the data and results directories, or too large."""


class RecipientsInvalid(InvalidInput):
    """The campaign's recipient list cannot be read."""


# --- SMTP outcomes, raised inside the task: the type decides retry or give up. ---
class SmtpError(ConveyorError):
    """The SMTP server did not take the message."""

    def __init__(self, message: str, code: int | None = None, response: str | None = None) -> None:
        self.code = code
        self.response = response
        #: Recipients the server refused (address -> its reply), when it refused them one by one.
        self.refused: dict[str, str] = {}
        super().__init__(message)

    @property
    def reply(self) -> str:
        """The server's reply as `code text`, for the outbox."""
        if self.code is None:
            return self.response or str(self)
        return f"{self.code} {self.response or ''}".strip()


class SmtpTemporaryError(SmtpError, RetryableError):
    """The message was not handed over (connection failure, timeout, 4xx reply): retried."""


class SmtpPermanentError(SmtpError, PermanentError):
    """The server refused the message for good (5xx reply, refused recipients): not retried."""


class DeliveryUnknown(SmtpError, PermanentError):
    """The connection was lost after the message data was handed over: it may have gone out.

    Not resent blindly; an operator decides (`conveyor email outbox --status unknown`,
    `conveyor email resend ID`)."""


class OutboxError(ConveyorError):
    """The outbox does not allow this."""


class MessageNotFound(OutboxError, LookupError):
    """No outbox message has that id or key."""
