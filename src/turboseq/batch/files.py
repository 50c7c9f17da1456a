"""The files of a batch job: the input table (Parquet, JSON lines or CSV), and the output directory of numbered
shards with the job's manifest. A shard is written to a temporary name and renamed when whole, so a job that
is killed leaves only complete shards, and a rerun with the same manifest skips them."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from turboseq.errors import require_extra

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
MANIFEST = "_turboseq_job.json"


def _pyarrow():
    return require_extra("pyarrow", "batch", "turboseq batch")


def input_format(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown input format; name it .parquet, .jsonl (or .ndjson) or .csv")
    return fmt


def read_table(path: str | Path, column: str):
    """The input as a pyarrow Table; ValueError naming the file when it is missing, unreadable, or has no
    ``column``."""
    pa = _pyarrow()
    path = Path(path)
    fmt = input_format(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif fmt == "jsonl":
            import pyarrow.json as pj

            table = pj.read_json(path)
        else:
            import pyarrow.csv as pc

            # text stays text: "1" or "true" in a sentence column must not become a number
            table = pc.read_csv(path, convert_options=pc.ConvertOptions(column_types={column: pa.string()}))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise ValueError(f"{path}: not a readable {fmt} file ({str(err).splitlines()[0]})") from None
    if column not in table.column_names:
        raise ValueError(f"{path} has no column {column!r} (columns: {', '.join(table.column_names)})")
    return table


@dataclass
class Manifest:
    """What makes the shards of ``output`` belong to one job: a rerun must match it to reuse them."""

    input: str
    input_rows: int
    input_bytes: int
    model: str
    task: str
    column: str
    output_column: str
    shard_rows: int
    options: dict
    compute_type: str | None
    format: str

    def check_or_write(self, out_dir: Path) -> None:
        path = out_dir / MANIFEST
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = None
            mine = json.loads(json.dumps(asdict(self)))  # tuples etc. as they come back from JSON
            if old != mine:
                diff = [k for k in mine if old.get(k) != mine[k]] if isinstance(old, dict) else ["manifest"]
                raise ValueError(
                    f"{out_dir} holds shards of another job (it differs in: {', '.join(diff)}); "
                    "use another --output, or delete it to start over"
                )
            return
        if any(out_dir.glob("part-*")):
            raise ValueError(f"{out_dir} holds shards but no {MANIFEST}; use another --output")
        out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(asdict(self), indent=2) + "\n"))


def shard_path(out_dir: Path, index: int, fmt: str) -> Path:
    return out_dir / f"part-{index:05d}.{fmt}"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_shard(path: Path, table, fmt: str) -> None:
    """``table`` to ``path`` in ``fmt``, whole or not at all. CSV cells that hold lists (embeddings) are JSON."""
    pa = _pyarrow()

    def write(tmp: Path) -> None:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        elif fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            import pyarrow.csv as pc

            flat = table
            for i, field in enumerate(table.schema):
                if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
                    cells = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
                    flat = flat.set_column(i, field.name, pa.array(cells, pa.string()))
            pc.write_csv(flat, tmp)

    _atomic_write(path, write)


def output_array(values, task: str):
    """The task's outputs as a pyarrow array: strings (or lists of strings), or float32 vectors."""
    pa = _pyarrow()
    if task == "embed":
        import numpy as np

        matrix = np.asarray(values, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return pa.array(list(values))
