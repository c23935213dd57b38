"""Keeps API keys, secrets, signatures and listen keys out of every log line.

A structlog processor (installed by `daemon.logs.configure`, after exceptions are formatted, so
tracebacks are scrubbed too) that replaces:
- the value of any field whose name looks sensitive (api_key, secret, signature, listenKey,
  password, token, X-MBX-APIKEY, ...), at any depth of nested dicts and lists;
- `name=value` / `"name": "value"` inside strings (a URL query string, a repr, an error text);
- every occurrence of a secret registered with `register_secret` (the configured keys), even
  when it appears under an innocent name or inside other text;
- opaque tokens that look like keys or signatures: 32+ letters and digits, mixing both.
If scrubbing itself fails, the event is reduced to its name rather than written unscrubbed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

_NAMES = (r"api[_-]?key|apikey|api[_-]?secret|secret(?:[_-]?key)?|signature|listen[_-]?key|"
          r"passphrase|password|passwd|access[_-]?token|auth[_-]?token|token|private[_-]?key|"
          r"x-mbx-apikey|authorization")
_SENSITIVE_NAME = re.compile(rf"(?i)(?:^|[_-])(?:{_NAMES})(?:$|[_-])|^(?:{_NAMES})$")
# name=value, name: value, "name": "value" inside free text
_INLINE = re.compile(rf"(?i)\b({_NAMES})(\"?'?\s*[:=]\s*[\"']?)([^\s\"'&,;}}\]]+)")
_TOKEN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{32,}(?![A-Za-z0-9])")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_MIN_SECRET = 6  # shorter values would redact ordinary words; real keys are far longer


def register_secret(value: str) -> None:
    """Redact `value` wherever it appears from now on (longest first, so a key that contains
    another is replaced whole)."""
    global _secrets
    if not value or len(value) < _MIN_SECRET:
        return
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | {value}, key=len, reverse=True))


def clear_secrets() -> None:
    """For tests."""
    global _secrets
    with _lock:
        _secrets = ()


def is_sensitive_name(name: str) -> bool:
    return bool(_SENSITIVE_NAME.search(name))


def _token(match: re.Match[str]) -> str:
    text = match.group(0)
    has_digit = any(ch.isdigit() for ch in text)
    has_alpha = any(ch.isalpha() for ch in text)
    return REDACTED if has_digit and has_alpha else text


def scrub_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _INLINE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _TOKEN.sub(_token, text)


def scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth > 20:
        return REDACTED
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and is_sensitive_name(k) and value[k]
                    not in (None, "") else scrub(value[k], depth + 1)) for k in value}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, depth + 1) for v in value]
    # anything else would be str()-ed by the JSON renderer: do that here, then scrub it
    return scrub_text(str(value))


def redact_event(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor."""
    try:
        return scrub(event_dict)  # type: ignore[no-any-return]
    except Exception:  # never let an unscrubbed event through
        return {"event": "log_event_dropped", "reason": "redaction failed",
                "original_event": scrub_text(str(event_dict.get("event", ""))[:64])}
