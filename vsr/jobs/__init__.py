"""Batch jobs: planning, SQLite job state, keyframe segments, joining, local and Ray workers."""

from vsr.jobs.plan import DEFAULT_TEMPLATE, Job, JobOptions
from vsr.jobs.runner import BatchConfig, BatchProgress, BatchResult, run_batch

__all__ = ["DEFAULT_TEMPLATE", "BatchConfig", "BatchProgress", "BatchResult", "Job",
           "JobOptions", "run_batch"]
