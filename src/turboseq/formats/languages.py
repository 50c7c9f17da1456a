"""Languages: which pair a translation directory translates, language names, and detecting a text's language.

A Marian (opus-mt) directory names its pair in ``tokenizer_config.json`` (``source_lang``, ``target_lang``) or
in its name (``opus-mt-en-de``, ``opus-mt-tc-big-en-de``). Detection uses py3langid (a maintained langid.py
whose model ships in its wheel: nothing is downloaded; 97 languages), loaded on first use (~0.6 s).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

# English names of the languages opus-mt and LibreTranslate most often serve (others are shown by their code)
NAMES = {
    "af": "Afrikaans", "ar": "Arabic", "az": "Azerbaijani", "be": "Belarusian", "bg": "Bulgarian",
    "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish", "gl": "Galician", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "is": "Icelandic",
    "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh", "ko": "Korean", "lt": "Lithuanian",
    "lv": "Latvian", "mk": "Macedonian", "ms": "Malay", "mt": "Maltese", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "th": "Thai",
    "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}  # fmt: skip

_NAMED_PAIR = re.compile(r"opus-mt-(?:tc-(?:big|base)-)?([a-z]{2,3})-([a-z]{2,3})(?![a-z])")


def language_name(code: str) -> str:
    return NAMES.get(code, code)


def language_pair(model_dir: str | Path, config: dict) -> tuple[str, str] | None:
    """(source, target) codes of a translation directory, or None where it does not say."""
    import json

    tokenizer_config = Path(model_dir) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            info = json.loads(tokenizer_config.read_text())
        except ValueError:
            info = {}
        source, target = info.get("source_lang"), info.get("target_lang")
        if isinstance(source, str) and isinstance(target, str) and source and target:
            return source, target
    for name in (Path(model_dir).name, str(config.get("_name_or_path", ""))):
        found = _NAMED_PAIR.search(name.lower())
        if found:
            return found.group(1), found.group(2)
    return None


_identifier = None
_lock = threading.Lock()


def detect(text: str, top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` most likely languages of ``text`` with their probabilities (0..1), most likely first."""
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        ranked = _identifier.rank(text)
    return [(code, float(p)) for code, p in ranked[:top]]
