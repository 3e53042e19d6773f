"""Credentials out of everything the pipeline writes down: params, tags, artifacts, log lines and error messages.

Every URL in a text is parsed and rewritten without its userinfo (`https://user:p@ss@host/` -> `https://host/`: the
host follows the last `@` of the authority, so a password may hold `@` and `:`) and with the values of
credential-like query keys replaced (`?token=abc` -> `?token=REDACTED`). Parsing, not a pattern over the whole text,
so that a password with `@`, `:` or `/` in its percent-encoded form never leaves a tail behind.
"""

import logging
import re

URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)\]]")  # without a sentence's last mark
CREDENTIAL_KEY = re.compile(r"token|secret|pass|pwd|key|auth|sig|credential|session|cookie", re.IGNORECASE)
HIDDEN = "REDACTED"


def redact_url(url: str) -> str:
    """`url` without userinfo and with credential-like query values replaced."""
    scheme, rest = url.split("://", 1)
    end = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0] or [len(rest)])
    authority, tail = rest[:end], rest[end:]
    host = authority.rsplit("@", 1)[-1]
    path, question, query = tail.partition("?")
    if question:
        query, hash_mark, fragment = query.partition("#")
        pairs = []
        for pair in query.split("&"):
            key, equals, _ = pair.partition("=")
            pairs.append(f"{key}={HIDDEN}" if equals and CREDENTIAL_KEY.search(key) else pair)
        query = "&".join(pairs) + hash_mark + fragment
    return f"{scheme}://{host}{path}{question}{query}"


def redact(text):
    """`text` with every URL in it redacted (anything else is returned as it is)."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return URL.sub(lambda match: redact_url(match.group(0)), text)


def redact_values(value):
    """A config (dicts, lists, strings) with every string redacted."""
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_values(item) for item in value]
    return redact(value)


def redact_log_records() -> None:
    """Redact every log record of this process as it is made, whichever logger made it and whichever handler (a
    job's log, pytest's capture) takes it."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacting", False):
        return

    def redacted_record(*args, **kwargs):
        record = make(*args, **kwargs)
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact(message), ()
        return record

    redacted_record.redacting = True
    logging.setLogRecordFactory(redacted_record)
