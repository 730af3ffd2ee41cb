from datetime import timedelta

import pytest

from outagewatch.durations import format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("15m", 900), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400), ("2w", 1209600),
    ("1.5s", 1.5), ("PT15M", 900), ("P1DT2H", 93600), ("900", 900), ("0.25", 0.25),
    (45, 45), (2.5, 2.5), (" 15m ", 900),
])
def test_parse(text, seconds):
    assert timedelta(seconds=seconds) == parse_duration(text)


@pytest.mark.parametrize("text", ["15 minutes", "m", "1h 30m", "abc", "", "PTX", "1y", True])
def test_rejects_garbage(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "-5m", "-1", -3, "PT0S"])
def test_rejects_zero_and_negative(text):
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.3, "300ms"), (90, "1m30s"), (3600, "1h"),
                                               (93784, "1d2h3m4s")])
def test_format(seconds, text):
    assert text == format_duration(seconds)
    assert timedelta(seconds=seconds) == parse_duration(text)
