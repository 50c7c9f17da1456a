"""``turboseq batch``: one task over every row of a table, in this process or on a Ray cluster (Ray Data), into
an output directory of numbered shards (``batch.files``) that a rerun resumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from turboseq.batch.files import Manifest, input_format, output_array, read_table, shard_path, write_shard
from turboseq.batch.predict import INPUT_COLUMNS, OUTPUT_COLUMNS, Predictor, task_for_kind
from turboseq.errors import require_extra

ROW = "__turboseq_row"  # the row index that travels with each row through Ray


@dataclass
class JobResult:
    rows: int
    shards: int
    written: int  # shards written by this run
    skipped: int  # shards already there from an earlier run
    out_dir: Path

    def summary(self) -> str:
        done = f"{self.written} shard{'s' * (self.written != 1)} written"
        if self.skipped:
            done += f", {self.skipped} already there"
        return f"{self.rows} rows in {self.shards} shards ({done}) in {self.out_dir}"


def run_job(
    model: str | Path,
    input_path: str | Path,
    out_dir: str | Path,
    *,
    column: str | None = None,
    output_column: str | None = None,
    task: str | None = None,
    use_ray: bool = False,
    ray_address: str | None = None,
    concurrency: int = 1,
    num_cpus: float | None = None,
    batch_size: int = 64,
    shard_rows: int = 1000,
    compute_type: str | None = None,
    progress: bool = True,
    **options,
) -> JobResult:
    """Run ``task`` (default: the model's own) over ``column`` of ``input_path`` and write
    ``out_dir/part-NNNNN.<format>``: each shard holds ``shard_rows`` input rows, in input order, with every input
    column plus ``output_column``. Shards already written by the same job are skipped. ``options`` go to the
    task's helper (``num_beams=4``, ...). With ``use_ray``, Ray Data runs ``concurrency`` actors of
    ``num_cpus`` CPUs each (a local Ray, or the cluster at ``ray_address``); without it, this process runs it."""
    if use_ray:  # before anything is read or written
        require_extra("ray.data", "ray", "turboseq batch --ray")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
    model = str(Path(model).resolve())
    out_dir = Path(out_dir)
    task, column, output_column, table, fmt = _open_job(
        model, input_path, out_dir, task, column, output_column, shard_rows, options, compute_type
    )
    shards = -(-table.num_rows // shard_rows)

    def shard_len(k: int) -> int:  # the last shard may be short
        return min(shard_rows, table.num_rows - k * shard_rows)

    todo = [k for k in range(shards) if not shard_path(out_dir, k, fmt).exists()]
    result = JobResult(table.num_rows, shards, len(todo), shards - len(todo), out_dir)
    if not todo:
        return result
    predictor_kwargs = dict(
        input_column=column, output_column=output_column, task=task, compute_type=compute_type, **options
    )
    rows = sum(shard_len(k) for k in todo)
    from turboseq.models.progress import progress_bar

    with progress_bar(progress, rows, "row", task) as bar:

        def finish(k: int, outputs) -> None:
            part = table.slice(k * shard_rows, shard_len(k))
            write_shard(
                shard_path(out_dir, k, fmt), part.append_column(output_column, output_array(outputs, task)), fmt
            )

        if use_ray:
            ray_args = (ray_address, concurrency, num_cpus)
            _run_on_ray(model, table, column, todo, shard_rows, shard_len, batch_size, predictor_kwargs, bar, finish,
                        *ray_args)  # fmt: skip
        else:
            predictor = Predictor(model, **predictor_kwargs)
            for k in todo:
                part = table.slice(k * shard_rows, shard_rows).column(column).to_pylist()
                outputs = []
                for i in range(0, len(part), batch_size):
                    chunk = part[i : i + batch_size]
                    outputs.extend(predictor.run(chunk))
                    bar.update(len(chunk))
                finish(k, outputs)
    return result


def _open_job(model: str, input_path, out_dir: Path, task, column, output_column, shard_rows, options, compute_type):
    """The job's task and columns, its input table and format, checked against (or recorded in) the output
    directory's manifest: (task, column, output_column, table, format)."""
    from turboseq.load import inspect

    task = task_for_kind(inspect(model).kind, task, model)
    column = column or INPUT_COLUMNS[task]
    output_column = output_column or OUTPUT_COLUMNS[task]
    table = read_table(input_path, column)
    if output_column in table.column_names:
        raise ValueError(f"{input_path} already has a column {output_column!r}; name another with --output-column")
    fmt = input_format(input_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    Manifest(
        input=str(Path(input_path).resolve()),
        input_rows=table.num_rows,
        input_bytes=Path(input_path).stat().st_size,
        model=model,
        task=task,
        column=column,
        output_column=output_column,
        shard_rows=shard_rows,
        options=options,
        compute_type=compute_type,
        format=fmt,
    ).check_or_write(out_dir)
    return task, column, output_column, table, fmt


def _run_on_ray(
    model, table, column, todo, shard_rows, shard_len, batch_size, predictor_kwargs, bar, finish, address,
    concurrency, num_cpus,
) -> None:  # fmt: skip
    """The shards ``todo`` through Ray Data: blocks of ``batch_size`` rows, one map task each on an actor pool of
    ``concurrency`` predictors; a shard is written as soon as all its rows came back (a task whose actor died
    is retried on a restarted actor by Ray Data, so each row comes back exactly once)."""
    import numpy as np

    ray = require_extra("ray", "ray", "turboseq batch --ray")  # ray.data: imported by run_job's first check
    pa = require_extra("pyarrow", "batch", "turboseq batch")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards complete one after another: bounded memory here
    ctx.enable_progress_bars = False  # ours counts rows
    blocks = []
    for k in todo:
        start = k * shard_rows
        part = table.slice(start, shard_rows).select([column])
        part = part.append_column(ROW, pa.array(np.arange(start, start + part.num_rows, dtype=np.int64)))
        blocks.extend(part.slice(i, batch_size) for i in range(0, part.num_rows, batch_size))
    ds = ray.data.from_arrow(blocks).map_batches(
        Predictor,
        fn_constructor_args=(model,),
        fn_constructor_kwargs=predictor_kwargs,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus or 1,
    )
    out_col = predictor_kwargs["output_column"]
    pending: dict[int, dict[int, object]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for row, value in zip(batch[ROW].tolist(), batch[out_col]):
            k = row // shard_rows
            pending.setdefault(k, {})[row] = value
            if len(pending[k]) == shard_len(k):
                done = pending.pop(k)
                finish(k, [done[r] for r in sorted(done)])
        bar.update(len(batch[ROW]))
    if pending:  # cannot happen unless Ray lost rows: never write a partial shard
        raise RuntimeError(f"Ray returned incomplete shards {sorted(pending)}; rerun to resume")
