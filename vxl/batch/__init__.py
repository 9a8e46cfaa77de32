"""Batch jobs (DESIGN section 7): a JSONL file of requests run to a JSONL file of rows, one per request id,
resumable, with each video encoded once for all its questions. `vxl batch` runs it in-process
(`vxl.batch.local`) or on Ray Data (`vxl.integrations.ray`)."""
from vxl.batch.jobs import BatchItem, JobDefaults, OutputFile, Unit, make_units, read_items
from vxl.batch.local import run_job, run_units

__all__ = ["BatchItem", "JobDefaults", "OutputFile", "Unit", "make_units", "read_items", "run_job", "run_units"]
