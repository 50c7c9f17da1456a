"""turboseq export archives (``.pt2``): read the metadata, and refuse anything torch would unpickle.

``torch.export.load`` unpickles with ``weights_only=False`` in several places: a weight or constant whose
payload config says ``use_pickle``, custom and opaque objects among the constants, legacy ``.pt`` weight files,
and the sample inputs when the safe unpickler fails on them. A crafted archive can run code through any of
these. So before torch sees a file, every member is checked against the layout ``turboseq export`` writes:
only raw tensor payloads, JSON configs without pickled entries, and sample inputs that load with
``torch.load(weights_only=True)`` (torch tries that first, so it never falls back).

Those checks read the archive through Python's ``zipfile``, torch through its own reader (miniz). The two
agree on what a member holds only when the archive has one reading: so the layout is checked first, byte by
byte (``_check_layout``): every member named once, in a canonical form, its local header where the central
directory says and matching it, members back to back from the first byte, then the central directory and its
end record, with nothing hidden between them, before them or after them. An archive with two members of one
name, a member that another tool would name differently, or bytes that no member owns is refused.
"""

from __future__ import annotations

import io
import json
import struct
import unicodedata
import zipfile
from pathlib import Path

from turboseq.errors import ModelLoadError

EXPORT_FORMAT = "turboseq-encoder-export"  # the ``format`` of an encoder export's turboseq.json
GENERATION_FORMAT = "turboseq-generation-export"  # ... and of a generation model's (``models.artifact``)
FORMATS = (EXPORT_FORMAT, GENERATION_FORMAT)
# members of an AOTInductor build (``turboseq export --compile``): native code, run when the file is loaded
_NATIVE_PREFIX = "data/aotinductor/"

# member paths below the archive's root folder: exact names, or prefixes of raw payloads and JSON
_EXACT = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_RAW_PREFIXES = ("data/weights/weight_", "data/constants/tensor_")
_JSON_PREFIXES = ("models/", "data/weights/", "data/constants/", "extra/")


def _not_export(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: a file, but not a turboseq export (expected a model directory, or a .pt2 file "
        "written by `turboseq export`)"
    )


_LOCAL = b"PK\x03\x04"
_DESCRIPTOR = b"PK\x07\x08"
_END = b"PK\x05\x06"
_END64 = b"PK\x06\x06"
_LOCATOR64 = b"PK\x06\x07"


def _layout_error(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: refused: not an archive that `turboseq export` writes ({why})")


def _canonical(name: str) -> bool:
    """A member name every zip reader resolves the same way: relative, '/'-separated, no empty, '.' or '..'
    parts, no backslash, no control characters, no trailing '/' (directory members)."""
    if not name or name.startswith("/") or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _descriptor_length(handle, info: zipfile.ZipInfo) -> int:
    """Bytes of the data descriptor after a member's data (0 without one); it must repeat the central
    directory's CRC and sizes."""
    if not info.flag_bits & 0x08:
        return 0
    tail = handle.read(24)
    body = tail[4:] if tail.startswith(_DESCRIPTOR) else tail
    skip = len(tail) - len(body)
    for fmt in ("<IQQ", "<III"):
        size = struct.calcsize(fmt)
        if len(body) >= size and struct.unpack(fmt, body[:size]) == (info.CRC, info.compress_size, info.file_size):
            return skip + size
    return -1


def _check_layout(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse any archive whose members another zip reader could see differently (see the module's doc)."""
    infos = archive.infolist()
    size = path.stat().st_size
    seen: dict[str, str] = {}
    roots = set()
    for info in infos:
        name = info.filename
        if not _canonical(name) or name != info.orig_filename:
            raise _layout_error(path, f"member name {name!r} is not in canonical form")
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            raise _layout_error(path, f"member names {seen[key]!r} and {name!r} name one member twice")
        seen[key] = name
        roots.add(name.split("/", 1)[0])
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _layout_error(path, f"member {name!r} is compressed")
    if len(roots) > 1:
        raise _layout_error(path, "members under more than one root folder")
    with open(path, "rb") as handle:
        handle.seek(size - 22)
        end = handle.read(22)
        if len(end) != 22 or not end.startswith(_END) or archive.comment:
            raise _layout_error(path, "the archive does not end with its end record, or has a comment")
        entries = struct.unpack("<H", end[10:12])[0]
        if entries != 0xFFFF and entries != len(infos):
            raise _layout_error(path, "its end record and central directory count different members")
        offset = 0
        for info in sorted(infos, key=lambda i: i.header_offset):
            if info.header_offset != offset:
                raise _layout_error(path, f"bytes at offset {offset} belong to no member")
            handle.seek(offset)
            head = handle.read(30)
            if len(head) < 30 or not head.startswith(_LOCAL):
                raise _layout_error(path, f"member {info.filename!r} has no local header")
            flags, method = struct.unpack("<HH", head[6:10])
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            if handle.read(name_len) != info.filename.encode("utf-8") or method != 0 or flags != info.flag_bits:
                raise _layout_error(path, f"the local header of {info.filename!r} differs from the central directory")
            if not flags & 0x08 and struct.unpack("<III", head[14:26]) != (
                info.CRC,
                info.compress_size,
                info.file_size,
            ):
                raise _layout_error(path, f"the local header of {info.filename!r} differs from the central directory")
            handle.seek(offset + 30 + name_len + extra_len + info.compress_size)
            descriptor = _descriptor_length(handle, info)
            if descriptor < 0:
                raise _layout_error(
                    path, f"the data descriptor of {info.filename!r} differs from the central directory"
                )
            offset += 30 + name_len + extra_len + info.compress_size + descriptor
        if archive.start_dir != offset:
            raise _layout_error(path, f"bytes at offset {offset} belong to no member")
        # the central directory, then (zip64) its end record and locator, then the end record: nothing else
        handle.seek(offset)
        directory_end = offset + sum(
            46 + len(i.orig_filename.encode("utf-8")) + len(i.extra) + len(i.comment) for i in infos
        )
        if directory_end != size - 22:
            handle.seek(directory_end)
            zip64 = handle.read(size - 22 - directory_end)
            if not (zip64.startswith(_END64) and zip64[-20:].startswith(_LOCATOR64)):
                raise _layout_error(path, "bytes between the central directory and its end record")
            record_size = struct.unpack("<Q", zip64[4:12])[0] + 12
            if record_size + 20 != len(zip64) or struct.unpack("<Q", zip64[-12:-4])[0] != directory_end:
                raise _layout_error(path, "bytes between the central directory and its end record")
            if struct.unpack("<Q", zip64[32:40])[0] != len(infos):
                raise _layout_error(path, "its end record and central directory count different members")


def _check_member(path: Path, archive: zipfile.ZipFile, name: str, trust_compiled_code: bool) -> None:
    root, _, rest = name.partition("/")
    if rest.startswith(_NATIVE_PREFIX):
        if trust_compiled_code:
            return
        raise ModelLoadError(
            f"{path}: holds compiled native code (`turboseq export --compile`), which runs when it is loaded; "
            "load it with trust_compiled_code=True (CLI: --trust-compiled-code) only if you built it or trust "
            "whoever did"
        )
    unsafe = ModelLoadError(
        f"{path}: refused: archive member {name!r} is not part of a turboseq export "
        "(it could carry code that torch would unpickle)"
    )
    if not rest or rest in _EXACT or rest.endswith("/"):
        return
    if rest.startswith(_RAW_PREFIXES):
        return
    if rest.startswith("data/sample_inputs/") and rest.endswith(".pt"):
        import torch

        try:  # the safe unpickler only: torch tries it first and falls back to the unsafe one if it fails
            torch.load(io.BytesIO(archive.read(name)), weights_only=True)
        except Exception:
            raise unsafe from None
        return
    if rest.startswith(_JSON_PREFIXES) and rest.endswith(".json"):
        if rest.startswith(("data/weights/", "data/constants/")):
            try:
                config = json.loads(archive.read(name)).get("config", {})
            except (ValueError, AttributeError):
                raise unsafe from None
            for entry in config.values():
                if (
                    not isinstance(entry, dict)
                    or entry.get("use_pickle")
                    or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_"))
                ):
                    raise unsafe
        return
    if rest.startswith("extra/"):
        return
    raise unsafe


def read_export_metadata(path: str | Path, check_members: bool = True, trust_compiled_code: bool = False) -> dict:
    """The turboseq metadata of an export file; raises ``ModelLoadError`` for any other file. With
    ``check_members`` (what must precede ``torch.export.load``), also checks that torch can load it without
    unpickling anything but plain tensors; without, only the metadata is read (enough to tell the kind)."""
    path = Path(path)
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise _not_export(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_layout(path, archive)
            names = archive.namelist()
            metas = [n for n in names if n.rsplit("/", 1)[-1] == "turboseq.json"]
            meta = json.loads(archive.read(metas[0]).decode("utf-8")) if metas else None
            if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
                raise ModelLoadError(
                    f"{path}: a zip archive (a torch.export program?), but not one written by `turboseq export`"
                )
            for name in names if check_members else ():
                _check_member(path, archive, name, trust_compiled_code)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        if isinstance(err, ModelLoadError):
            raise
        raise ModelLoadError(f"{path}: not a readable turboseq export ({type(err).__name__}: {err})") from None
    return meta
