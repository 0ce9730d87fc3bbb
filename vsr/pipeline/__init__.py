"""The concurrent decode -> infer -> encode pipeline (threads on CPU, streams on CUDA)."""

from vsr.pipeline.compute import ComputeReport, CpuProcessor
from vsr.pipeline.run import Progress, RunStats, run_pipeline


def make_processor(handle, *, tile: int | None = None, overlap: int = 16, guard: bool = True,
                   runner=None, batch: int = 1):
    """The inference stage for ``handle.device``: CudaProcessor on CUDA, else CpuProcessor
    (also for ``batch`` > 1 on CUDA). ``runner``: a vsr.backends Runner to infer through.
    The output guard runs only for handles whose output can fail (``handle.can_fail``)."""
    guard = guard and getattr(handle, "can_fail", True)
    if handle.device.type == "cuda" and batch == 1:
        from vsr.pipeline.cuda import CudaProcessor

        return CudaProcessor(handle, tile=tile, overlap=overlap, guard=guard, runner=runner)
    return CpuProcessor(handle, tile=tile, overlap=overlap, guard=guard, runner=runner,
                        batch=batch)


__all__ = ["ComputeReport", "CpuProcessor", "Progress", "RunStats", "make_processor",
           "run_pipeline"]
