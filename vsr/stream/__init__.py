"""Live streams: `vsr stream SRC DST` with bounded latency, counted drops and reconnects."""

from vsr.stream.run import DROP_POLICIES, StreamConfig, StreamStats, run_stream

__all__ = ["DROP_POLICIES", "StreamConfig", "StreamStats", "run_stream"]
