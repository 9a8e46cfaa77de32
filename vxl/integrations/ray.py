"""vxl on Ray Data: `VXLPredictor`, a callable class for `Dataset.map_batches` that builds one `LLM` per
actor, and `build_pipeline`, the batch job as a Ray Data pipeline (units of work, one per video with its
questions, mapped over an `ActorPoolStrategy` pool). `vxl batch --ray` runs it and appends the rows to
its output file. Ray is imported lazily: vxl imports without it (`pip install 'ray[data]'`).

Faults: a failing request or video is an error row (the job goes on). An actor that dies is restarted
by Ray Data (its actors default to max_restarts=-1, max_task_retries=-1) and its unfinished batch is
rerun; rows leave a task only when the task ends, and the output file drops ids it already holds, so
every request id appears exactly once.
"""
from __future__ import annotations

import json
from typing import Callable, Iterable

from vxl.batch.jobs import JobDefaults, Unit, make_units, read_items
from vxl.batch.local import Progress, run_units

UNIT_COLUMN = "unit"        # the input column of the pipeline: one Unit as JSON per row


class VXLPredictor:
    """Ray Data callable class: `__init__` loads the model once per actor; `__call__` takes a batch with
    a "unit" column (`Unit.to_json()`) and returns one output row per request of its units:
    {"request_id": [...], "row": [the output line as JSON (request_id, text, token_ids, finish_reason,
    error, metrics)]}. The row is kept as JSON text because metrics' keys vary between rows."""

    def __init__(self, engine_kwargs: dict | None = None):
        from vxl import LLM
        self.llm = LLM(**(engine_kwargs or {}))

    def __call__(self, batch: dict) -> dict:
        rows: list[dict] = []
        units = [Unit.from_json(str(text)) for text in batch[UNIT_COLUMN]]
        run_units(self.llm, units, rows.append)
        return {"request_id": [r["request_id"] for r in rows], "row": [json.dumps(r, default=str) for r in rows]}


def units_dataset(units: Iterable[Unit], units_per_call: int = 1):
    """A Ray Dataset with one row per unit, in blocks of `units_per_call` rows (one actor call each)."""
    import ray.data
    rows = [{UNIT_COLUMN: unit.to_json()} for unit in units]
    return ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // units_per_call)))


def build_pipeline(source, engine_kwargs: dict | None = None, *, num_replicas: int = 1,
                   gpus_per_replica: float = 0.0, defaults: JobDefaults | None = None, group: bool = True,
                   skip_ids: Iterable[str] = (), units_per_call: int = 1, predictor: type = VXLPredictor):
    """The batch job as a lazy Ray Dataset of output rows (columns "request_id" and "row").

    source: a JSONL path (read and grouped by video here, on the driver: a bad line becomes a unit that
    gives its error row), a list of `Unit`s, or a Ray Dataset with a "unit" column. engine_kwargs go to
    `LLM(...)` in each of the `num_replicas` actors, each given `gpus_per_replica` GPUs. Request ids in
    `skip_ids` are left out (a resumed job). Each actor call runs `units_per_call` units together (more
    packs more requests per forward; fewer redoes less after a fault). `predictor` may be a subclass of
    VXLPredictor.
    """
    import ray.data
    if isinstance(source, str):
        items = read_items(source, defaults or JobDefaults())
        skip = set(skip_ids)
        source = make_units([i for i in items if i.request_id not in skip], group)
    if isinstance(source, list):
        source = units_dataset(source, units_per_call)
    return source.map_batches(predictor, fn_constructor_kwargs={"engine_kwargs": engine_kwargs or {}},
                              batch_size=units_per_call, compute=ray.data.ActorPoolStrategy(size=num_replicas),
                              num_gpus=gpus_per_replica or None)


def run_on_ray(units: list[Unit], emit: Callable[[dict], None], engine_kwargs: dict, address: str | None = None,
               num_replicas: int = 1, gpus_per_replica: float = 0.0, use_tqdm: bool = True,
               units_per_call: int = 1, predictor: type = VXLPredictor) -> None:
    """Run `units` on Ray (connecting to `address`, else to the running or a new local cluster) and hand
    each output row to `emit` as its task ends."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--ray needs Ray Data: pip install 'ray[data]'") from None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False    # ours counts requests
    progress = Progress(sum(len(u.items) for u in units), use_tqdm)
    try:
        ds = build_pipeline(units, engine_kwargs, num_replicas=num_replicas, gpus_per_replica=gpus_per_replica,
                            units_per_call=units_per_call, predictor=predictor)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["row"]:
                emit(json.loads(str(text)))
                progress.update()
    finally:
        progress.close()
