"""turboseq export archives (``.pt2``): read the metadata, and refuse anything torch would unpickle.

``torch.export.load`` unpickles with ``weights_only=False`` in several places: a weight or constant whose
payload config says ``use_pickle``, custom and opaque objects among the constants, legacy ``.pt`` weight files,
and the sample inputs when the safe unpickler fails on them. A crafted archive can run code through any of
these. So before torch sees a file, every member is checked against the layout ``turboseq export`` writes:
only raw tensor payloads, JSON configs without pickled entries, and sample inputs that load with
``torch.load(weights_only=True)`` (torch tries that first, so it never falls back).
"""

from __future__ import annotations

import io
import json
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
