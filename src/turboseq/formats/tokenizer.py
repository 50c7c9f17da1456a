"""Tokenizers: loading transformers' tokenizers (no remote code), or for Marian (opus-mt) directories the same
tokenization without importing transformers (``MarianText``), and encoding texts within a length limit."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from turboseq.errors import InputTooLong, ModelLoadError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "source.spm", "spiece.model", "vocab.json")


def load_tokenizer(model_dir: Path):
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{model_dir}: no tokenizer files (looked for {', '.join(_TOKENIZER_FILES)}); "
            "token-level generate() works without one"
        )
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        import json

        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelLoadError(f"{config_file}: not valid JSON ({err})") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise ModelLoadError(
                f"{config_file}: the tokenizer is custom code (auto_map), which turboseq never runs; "
                "use a model directory with a standard tokenizer"
            )
    lean = MarianText.open(model_dir)
    if lean is not None:
        return lean
    return load_transformers_tokenizer(model_dir)


def load_transformers_tokenizer(model_dir: Path):
    """transformers' tokenizer of ``model_dir`` (``AutoTokenizer``, no remote code)."""
    import warnings

    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            # MarianTokenizer's hint to install sacremoses, on every load: it only matters for its unused
            # moses-based pre-tokenization of targets
            warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
            return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as err:
        raise ModelLoadError(f"{model_dir}: cannot load the tokenizer ({type(err).__name__}: {err})") from None


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    limit: int,
    truncation: bool,
    indices: Sequence[int] | None = None,
    hint: str = "pass truncation=True to cut it",
) -> list[list[int]]:
    """Token ids (special tokens included) of each text; raises ``InputTooLong`` naming the first input over
    ``limit`` tokens (``indices`` number the inputs for the message), unless ``truncation`` cuts them."""
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings, not a single string")
    if not len(texts):
        return []
    rows = tokenizer(list(texts), truncation=truncation, max_length=limit if truncation else None)["input_ids"]
    for n, ids in enumerate(rows):
        if len(ids) > limit:
            raise InputTooLong(indices[n] if indices is not None else n, len(ids), limit, hint)
    return rows


def encode_pairs(
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    limit: int,
    truncation: bool,
    indices: Sequence[int] | None = None,
    hint: str = "pass truncation=True to cut it",
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each (text, text pair), as the tokenizer joins a pair, and each token's segment (0 for the
    first text, 1 for the second where the model tells them apart); ``encode_texts``' limit and truncation
    (the longer text of a pair is cut first)."""
    if not len(pairs):
        return [], []
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    out = tokenizer(
        firsts,
        seconds,
        truncation="longest_first" if truncation else False,
        max_length=limit if truncation else None,
        return_token_type_ids=True,
    )
    rows = out["input_ids"]
    for n, ids in enumerate(rows):
        if len(ids) > limit:
            raise InputTooLong(indices[n] if indices is not None else n, len(ids), limit, hint)
    return rows, out["token_type_ids"]


class MarianText:
    """transformers' ``MarianTokenizer`` for what turboseq asks of it (encode, decode, the special ids), on
    sentencepiece and the vocabulary alone: importing transformers and building its tokenizer take 1.5 s, most of
    a command's start-up. The same ids and texts (tests compare them on many inputs); any other attribute is
    transformers' own tokenizer, loaded when first asked for. ``open`` takes only the directories it matches
    exactly (shared vocabulary, the three usual special tokens, right truncation)."""

    SPIECE_UNDERLINE = "\u2581"

    def __init__(self, model_dir: Path, config: dict, vocab: dict[str, int]):
        import sentencepiece

        self.path = model_dir
        self.encoder = vocab
        self.decoder = {v: k for k, v in vocab.items()}
        self.unk_token, self.eos_token, self.pad_token = (
            config.get("unk_token", "<unk>"),
            config.get("eos_token", "</s>"),
            config.get("pad_token", "<pad>"),
        )
        self.model_max_length = config.get("model_max_length", 512)
        self.spm_source = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "source.spm"))
        self.spm_target = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "target.spm"))
        self.all_special_tokens = [self.eos_token, self.unk_token, self.pad_token]
        self.all_special_ids = [self.encoder[t] for t in self.all_special_tokens]
        self.unk_token_id = self.encoder[self.unk_token]
        self.eos_token_id = self.encoder[self.eos_token]
        self.pad_token_id = self.encoder[self.pad_token]
        self.bos_token_id = None
        # added tokens split the text first, longest first (transformers' trie)
        specials = sorted(set(self.all_special_tokens), key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")
        self._full = None

    @classmethod
    def open(cls, model_dir: Path) -> MarianText | None:
        """The lean tokenizer of a Marian directory, or None where only transformers' reproduces it."""
        files = [model_dir / name for name in ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json")]
        if not all(f.is_file() for f in files) or os.environ.get("TURBOSEQ_LEAN_TOKENIZER", "1") == "0":
            return None
        try:
            config = json.loads(files[3].read_text(encoding="utf-8"))
            vocab = json.loads(files[2].read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None  # transformers' loader gives the error
        plain = {"tokenizer_class", "source_lang", "target_lang", "model_max_length", "separate_vocabs"}
        plain |= {"eos_token", "unk_token", "pad_token", "name_or_path", "special_tokens_map_file", "sp_model_kwargs"}
        if (
            not isinstance(config, dict)
            or config.get("tokenizer_class") != "MarianTokenizer"
            or not set(config) <= plain
            or config.get("separate_vocabs")
            or config.get("sp_model_kwargs")
            or (model_dir / "added_tokens.json").exists()
            or (model_dir / "special_tokens_map.json").exists()
            or not isinstance(vocab, dict)
            or not all(isinstance(config.get(k, ""), str) for k in ("eos_token", "unk_token", "pad_token"))
            or not all(
                config.get(k, d) in vocab
                for k, d in (("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<pad>"))
            )
        ):
            return None
        return cls(model_dir, config, vocab)

    def __getattr__(self, name: str):
        # anything else a user asks of ``model.tokenizer``: transformers' tokenizer answers it
        if name.startswith("__") or name in ("_full", "path"):
            raise AttributeError(name)
        return getattr(self.transformers(), name)

    def __len__(self) -> int:  # special methods are looked up on the class, past ``__getattr__``
        return len(self.transformers())

    def transformers(self):
        """transformers' tokenizer of the same directory (loaded once, on first use)."""
        if self._full is None:
            self._full = load_transformers_tokenizer(self.path)
        return self._full

    # --- encoding ---------------------------------------------------------------------------------------

    def _tokenize(self, text: str, spm) -> list[int]:
        ids = []
        specials = set(self.all_special_tokens)
        for chunk in self._split.split(text):
            if chunk in specials:
                ids.append(self.encoder[chunk])
            elif chunk:
                code = []
                if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:  # a language code like >>de<<
                    code, chunk = [chunk[: end + 2]], chunk[end + 2 :]
                unk = self.encoder[self.unk_token]
                ids.extend(self.encoder.get(piece, unk) for piece in code + spm.encode(chunk, out_type=str))
        return ids

    _OPTIONS = frozenset({"truncation", "max_length", "add_special_tokens"})

    def __call__(self, text=None, text_target=None, **options) -> dict:
        if not set(options) <= self._OPTIONS or (text is None) == (text_target is None):
            # tensors, padding, pairs, source and target at once: transformers' tokenizer does all of it
            return self.transformers()(text, text_target=text_target, **options)
        return self._encode(text, text_target, **options)

    def _encode(
        self,
        text,
        text_target,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> dict:
        texts, spm = (text, self.spm_source) if text is not None else (text_target, self.spm_target)
        single = isinstance(texts, str)
        rows = []
        for item in [texts] if single else texts:
            ids = self._tokenize(item, spm)
            if truncation:
                limit = (max_length or self.model_max_length) - (1 if add_special_tokens else 0)
                ids = ids[: max(limit, 0)]
            rows.append(ids + [self.eos_token_id] if add_special_tokens else ids)
        return {"input_ids": rows[0] if single else rows}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    # --- decoding ---------------------------------------------------------------------------------------

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._token(int(i)) for i in ids if int(i) not in skip]

    def _token(self, index: int) -> str:
        if index in self.decoder:
            return self.decoder[index]
        return self.spm_source.IdToPiece(index) or self.unk_token

    def decode(self, ids, skip_special_tokens: bool = False, **options) -> str:
        if options:  # clean_up_tokenization_spaces, use_source_tokenizer, ...
            return self.transformers().decode(ids, skip_special_tokens=skip_special_tokens, **options)
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens)
        specials = set(self.all_special_tokens)
        pieces: list[str] = []
        out = ""
        # shared vocabularies decode with the source model (as transformers' MarianTokenizer does)
        for token in tokens:
            if token in specials:
                out += self.spm_source.decode_pieces(pieces) + token + " "
                pieces = []
            else:
                pieces.append(token)
        out += self.spm_source.decode_pieces(pieces)
        return out.replace(self.SPIECE_UNDERLINE, " ").strip()

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **options) -> list[str]:
        return [self.decode(seq, skip_special_tokens, **options) for seq in sequences]
