"""Credentials out of URLs, by parsing: userinfo with `@` and `:` in the password, credential-like query values."""

import logging

import pytest

from bertpipe.redaction import redact, redact_log_records, redact_values


@pytest.mark.parametrize("url, shown", [
    ("https://user:p@ss@host/x", "https://host/x"),  # the host follows the last @ (a pattern stopped at the first)
    ("https://user:p@ss:w0rd@host:8443/a/b?x=1", "https://host:8443/a/b?x=1"),
    ("http://host/?token=abc&lang=en", "http://host/?token=REDACTED&lang=en"),
    ("http://host/path?X-Amz-Signature=f00&api_key=k&page=2#top",
     "http://host/path?X-Amz-Signature=REDACTED&api_key=REDACTED&page=2#top"),
    ("https://u:pw@host?access_token=t", "https://host?access_token=REDACTED"),
    ("file:///data/mirror", "file:///data/mirror"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_a_url_keeps_its_host_path_and_plain_query_and_loses_its_credentials(url, shown):
    assert redact(url) == shown


def test_every_url_in_a_text_or_a_config_is_redacted_and_other_values_kept():
    text = "fetching https://a:b@c@mirror/x (retry 2), then http://host/?token=t."
    assert redact(text) == "fetching https://mirror/x (retry 2), then http://host/?token=REDACTED."
    config = {"dump": {"mirror": "https://u:p@h/"}, "list": ["http://h/?secret=s", 3], "n": None}
    assert redact_values(config) == {"dump": {"mirror": "https://h/"}, "list": ["http://h/?secret=REDACTED", 3],
                                     "n": None}


def test_log_records_are_redacted_whichever_logger_makes_them(caplog):
    redact_log_records()
    logging.getLogger("a.library").warning("Retrying %s", "https://me:pa@ss@host/api?token=t")
    assert "https://host/api?token=REDACTED" in caplog.text and "pa@ss" not in caplog.text
