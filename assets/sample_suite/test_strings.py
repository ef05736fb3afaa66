"""String handling checks: a small, fast, always-passing sample."""


def test_upper():
    assert "dtf".upper() == "DTF"


def test_split_join():
    words = "distributed testing framework".split()
    assert "-".join(words) == "distributed-testing-framework"


def test_format():
    assert f"{3.14159:.2f}" == "3.14"


def test_unicode_roundtrip():
    text = "naïve café"
    assert text.encode("utf-8").decode("utf-8") == text
