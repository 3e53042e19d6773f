"""Credentials out of everything the pipeline writes down: params, tags, artifacts, log lines and error messages.

Every URL in a text is parsed and rewritten without its userinfo (`https://user:p@ss@host/` -> `https://host/`: the
host follows the last `@` of the authority, so a password may hold `@` and `:`) and with the values of
credential-like query keys replaced (`?token=abc` -> `?token=REDACTED`). Parsing, not a pattern over the whole text,
so that a password with `@`, `:` or `/` in its percent-encoded form never leaves a tail behind.

`credentials_in` finds the same credentials, for settings that must not hold any (a URL there would reach command
lines and logs before anything could redact it).
"""

import logging
import re
import urllib.parse

URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)\]]")  # without a sentence's last mark
CREDENTIAL_KEY = re.compile(r"token|secret|pass|pwd|key|auth|sig|credential|session|cookie", re.IGNORECASE)
HIDDEN = "REDACTED"


def _authority(url: str) -> tuple:
    """(scheme, authority, the rest) of `url`; the authority ends at the first `/`, `?` or `#`."""
    scheme, rest = url.split("://", 1)
    end = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0] or [len(rest)])
    return scheme, rest[:end], rest[end:]


def _is_credential_key(key: str) -> bool:
    """Whether a query key names a credential, percent-encoded or not (`token`, `%74oken`, `api_key`)."""
    return bool(CREDENTIAL_KEY.search(urllib.parse.unquote(key)))


def redact_url(url: str) -> str:
    """`url` without userinfo and with credential-like query values replaced."""
    scheme, authority, tail = _authority(url)
    host = authority.rsplit("@", 1)[-1]
    path, question, query = tail.partition("?")
    if question:
        query, hash_mark, fragment = query.partition("#")
        pairs = []
        for pair in query.split("&"):
            key, equals, _ = pair.partition("=")
            pairs.append(f"{key}={HIDDEN}" if equals and _is_credential_key(key) else pair)
        query = "&".join(pairs) + hash_mark + fragment
    return f"{scheme}://{host}{path}{question}{query}"


def credentials_in(url: str) -> list:
    """What in `url` is a credential, described without its value: userinfo (`user@`, `user:password@`) and each
    query key that redact_url hides (`?token=`); empty for a URL without any, or a plain path."""
    if "://" not in url:
        return []
    _, authority, tail = _authority(url)
    found = []
    userinfo, at, _ = authority.rpartition("@")
    if at:
        found.append("a user and password (user:password@)" if ":" in userinfo else "a user name (user@)")
    query = tail.partition("#")[0].partition("?")[2]
    for pair in query.split("&"):
        key, equals, _ = pair.partition("=")
        if equals and _is_credential_key(key):
            found.append(f"the query key {key!r}")
    return found


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
