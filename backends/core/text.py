"""One check for every free-text input of every panel (texts, instructions, expressions, labels)."""

from __future__ import annotations

import unicodedata

from backends.core.service import ServiceError

#: more control, surrogate or other non-text characters than this share, and the input is not text
MAX_CONTROL_SHARE = 0.05


def check_text(text: str | None, what: str, max_chars: int | None = None, required: bool = True) -> str:
    """``text`` stripped, or a :class:`ServiceError` naming ``what`` when it is empty (and ``required``), longer than
    ``max_chars`` or not text (binary bytes, control characters, broken UTF-8 surrogates)."""
    if text is not None and not isinstance(text, str):
        raise ServiceError(f"the {what} must be text, not {type(text).__name__}")
    stripped = (text or "").strip()
    if not stripped:
        if required:
            raise ServiceError(f"enter the {what} (it is empty)")
        return ""
    if max_chars is not None and len(stripped) > max_chars:
        raise ServiceError(f"the {what} is too long ({len(stripped):,} characters); keep it under {max_chars:,}")
    odd = sum(1 for char in stripped if unicodedata.category(char)[0] == "C" and char not in "\n\r\t")
    if odd > MAX_CONTROL_SHARE * len(stripped):
        raise ServiceError(
            f"the {what} does not look like text ({odd} of its {len(stripped)} characters are control or binary "
            "characters); type or paste plain text"
        )
    return stripped
