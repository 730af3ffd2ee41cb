"""A probe's password out of the text it reports, in every form a server may echo it.

A client sends the password as it is (POP3 PASS), IMAP-quoted (LOGIN escapes ``\\`` and
``"``) or in base64 (SMTP AUTH LOGIN alone, AUTH PLAIN as ``\\0user\\0password``); a
server may echo any of these, and an error's text may show it Python-escaped. Base64 is
masked at all three alignments, so the password is found inside any encoded string that
holds it (a PLAIN string with any user, a LOGIN answer), whatever precedes it.
Pure functions, no I/O.
"""

from __future__ import annotations

import base64

MIN_SCRUBBED = 4  # shorter secrets (and shorter forms of one) would mangle ordinary words
MASK = "***"


def secret_forms(password: str, *, username: str | None = None) -> tuple[str, ...]:
    """The forms of ``password`` to mask, longest first; none for a short password."""
    if len(password) < MIN_SCRUBBED:
        return ()
    plain = password.encode()
    texts = {password, _imap_quoted(password)}
    forms = texts | {escaped for text in texts for escaped in _python_escaped(text)}
    forms |= {_b64(plain), *_b64_cores(plain)}
    if username is not None:  # SASL PLAIN as clients send it, masked whole with the user
        forms |= {_b64(b"\0%s\0%s" % (username.encode(), plain)),
                  _b64(b"%s\0%s\0%s" % (username.encode(), username.encode(), plain))}
    return tuple(sorted((f for f in forms if len(f) >= MIN_SCRUBBED), key=len, reverse=True))


def scrub(text: str, forms: tuple[str, ...]) -> str:
    """``text`` with every form masked; a text cut short (details are truncated) that ends in
    the first characters of a form has them masked too."""
    for form in forms:
        text = text.replace(form, MASK)
    for form in forms:
        for size in range(len(form) - 1, MIN_SCRUBBED - 1, -1):
            if text.endswith(form[:size]):
                return text[:-size] + MASK
    return text


def _imap_quoted(text: str) -> str:
    """The inside of an RFC 3501 quoted string, as aioimaplib's ``quoted`` writes it."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _python_escaped(text: str) -> set[str]:
    """The inside of the repr of ``text`` as str and as bytes, with ``'`` escaped or not (the
    quotes repr picks depend on the text around it)."""
    forms: set[str] = set()
    for shown in (repr(text)[1:-1], repr(text.encode())[2:-1]):
        forms.add(shown)
        if "'" in text and "\\'" not in shown:
            forms.add(shown.replace("'", "\\'"))
    return forms


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_cores(secret: bytes) -> set[str]:
    """For each alignment of ``secret`` in a longer byte string, the base64 characters made
    of its bits alone (character i covers bits 6i to 6i+6)."""
    cores: set[str] = set()
    for offset in range(3):
        encoded = _b64(bytes(offset) + secret)
        first = (8 * offset + 5) // 6  # the first character starting inside the secret
        end = 8 * (offset + len(secret)) // 6  # past the last one ending inside it
        cores.add(encoded[first:end])
    return cores
