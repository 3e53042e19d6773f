"""Credentials out of URLs, by parsing: userinfo with `@` and `:` in the password, credential-like query values."""

import logging

import pytest

from bertpipe.redaction import credentials_in, redact, redact_log_records, redact_values


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


@pytest.mark.parametrize("url, found", [
    ("https://user:p@ss@host/x", ["a user and password (user:password@)"]),
    ("https://reader@host:8443/", ["a user name (user@)"]),
    ("http://host/?lang=en&token=abc", ["the query key 'token'"]),
    ("http://host/p?%74oken=abc&X-Amz-Signature=f00", ["the query key '%74oken'", "the query key 'X-Amz-Signature'"]),
    ("https://u:pw@host?access_token=t", ["a user and password (user:password@)", "the query key 'access_token'"]),
    ("https://dumps.wikimedia.org", []),
    ("http://host/p?lang=en&token#token=abc", []),  # a key without a value, and a fragment: never sent as a query
    ("file:///data/mirror", []),
    ("/data/user@host/mirror", []),  # a plain path, not a URL
])
def test_the_credentials_a_url_carries_are_named_without_their_values(url, found):
    assert credentials_in(url) == found


def test_the_query_keys_credentials_in_names_are_those_redact_hides():
    url = "https://host/p?%74oken=abc&api_key=k&page=2&sig=s"
    hidden = [pair.split("=")[0] for pair in redact(url).split("?")[1].split("&") if pair.endswith("=REDACTED")]
    assert hidden == ["%74oken", "api_key", "sig"]
    assert credentials_in(url) == [f"the query key {key!r}" for key in hidden]
