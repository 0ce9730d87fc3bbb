"""The concurrent decode -> infer -> encode pipeline (threads on CPU, streams on CUDA)."""

from vsr.pipeline.compute import ComputeReport, CpuProcessor
from vsr.pipeline.run import Progress, RunStats, run_pipeline


def make_processor(handle, *, tile: int | None = None, overlap: int = 16, guard: bool = True):
    """The inference stage for ``handle.device``: CudaProcessor on CUDA, else CpuProcessor."""
    if handle.device.type == "cuda":
        from vsr.pipeline.cuda import CudaProcessor

        return CudaProcessor(handle, tile=tile, overlap=overlap, guard=guard)
    return CpuProcessor(handle, tile=tile, overlap=overlap, guard=guard)


__all__ = ["ComputeReport", "CpuProcessor", "Progress", "RunStats", "make_processor",
           "run_pipeline"]
