"""Whisper's special tokens and text helpers over the model's ``tokenizer.json``: the start sequence, the
non-speech symbols to suppress, and the split of tokens into words (word timestamps)."""

from __future__ import annotations

import string
from functools import cached_property

# languages written without spaces between words: words split where the tokens decode to whole characters
_NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}
_NON_SPEECH_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + (
    "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
)
_MUSIC = set("♩♪♫♬♭♮♯")  # one 3-byte prefix: suppressing the first token is enough


class WhisperText:
    """Token ids and text for one Whisper model (its tokenizer and its generation config's Whisper keys)."""

    def __init__(self, tokenizer, whisper: dict, eot: int, sot: int):
        self.tokenizer = tokenizer
        self.whisper = whisper
        self.eot, self.sot = eot, sot
        self.no_timestamps = whisper.get("no_timestamps_token_id")
        self.timestamp_begin = None if self.no_timestamps is None else self.no_timestamps + 1
        self.sot_prev = whisper.get("prev_sot_token_id")
        self.multilingual = bool(whisper.get("is_multilingual"))

    def token(self, name: str) -> int | None:
        return self.tokenizer.token_to_id(name)

    @cached_property
    def no_speech(self) -> int | None:
        """``<|nospeech|>`` (newer vocabularies) or ``<|nocaptions|>``: its probability at the start token is
        Whisper's no-speech probability."""
        found = self.token("<|nospeech|>")
        return found if found is not None else self.token("<|nocaptions|>")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t < self.eot], skip_special_tokens=False)

    def language_ids(self) -> dict[str, int]:
        """{language code: token id} of a multilingual model."""
        return {name[2:-2]: i for name, i in (self.whisper.get("lang_to_id") or {}).items()}

    def sot_sequence(self, language: str | None, task: str | None) -> list[int]:
        """Start of transcript, then (multilingual models) the language and the task."""
        seq = [self.sot]
        if self.multilingual:
            codes = self.language_ids()
            code = (language or "en").strip("<|>")
            if code not in codes:
                raise ValueError(f"unknown `language` {language!r}; this model knows: {', '.join(sorted(codes))}")
            tasks = self.whisper.get("task_to_id") or {}
            task = task or "transcribe"
            if task not in tasks:
                raise ValueError(f"`task` must be one of {', '.join(tasks)}, got {task!r}")
            seq += [codes[code], tasks[task]]
        elif language not in (None, "en", "english") or task not in (None, "transcribe"):
            raise ValueError("this is an English-only Whisper model: `language` must be 'en' and `task` 'transcribe'")
        return seq

    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """Tokens of speaker tags, music and other non-speech annotations (openai/whisper's list, built from
        this vocabulary); basic punctuation stays allowed."""
        found = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in _NON_SPEECH_SYMBOLS + sorted(_MUSIC):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in _MUSIC:
                    found.add(tokens[0])
        return sorted(found)

    def suppress_tokens(self, suppress: list[int] | tuple | None) -> list[int]:
        """faster-whisper's ``suppress_tokens``: -1 stands for the non-speech tokens; the task, start and
        no-speech tokens are always suppressed."""
        chosen = [t for t in (suppress or []) if t >= 0]
        if suppress and -1 in suppress:
            chosen += self.non_speech_tokens
        always = [self.token(n) for n in ("<|transcribe|>", "<|translate|>", "<|startoflm|>")]
        chosen += [t for t in [*always, self.sot, self.sot_prev, self.no_speech] if t is not None]
        return sorted(set(chosen))

    def split_to_word_tokens(self, tokens: list[int], language: str | None) -> tuple[list[str], list[list[int]]]:
        """Words (with their leading space) and the tokens of each; specials stand alone."""
        if (language or "en") in _NO_SPACE_LANGUAGES:
            return self._split_on_unicode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for piece, piece_tokens in zip(*self._split_on_unicode(tokens)):
            starts_word = piece_tokens[0] >= self.eot or piece.startswith(" ") or piece.strip() in string.punctuation
            if starts_word or not words:
                words.append(piece)
                word_tokens.append(list(piece_tokens))
            else:
                words[-1] += piece
                word_tokens[-1].extend(piece_tokens)
        return words, word_tokens

    def _decode_all(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)  # specials decode to nothing

    def _split_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Pieces that decode to whole characters: a token ending mid-character joins the next one."""
        full = self._decode_all(tokens)
        replacement = "\ufffd"
        words, word_tokens, current, offset = [], [], [], 0
        for token in tokens:
            current.append(token)
            decoded = self._decode_all(current)
            at = decoded.find(replacement)
            if at < 0 or (at + offset < len(full) and full[at + offset] == replacement):
                words.append(decoded)
                word_tokens.append(current)
                current = []
                offset += len(decoded)
        return words, word_tokens
