"""DRC: dual regression compression of DRN networks (docs/method.md,
"Dual regression compression (DRC)").

Channel-number search (:mod:`.search`), dual regression channel pruning (:mod:`.prune`),
fine-tuning (:mod:`.finetune`), and the staged run behind `vsr compress` (:mod:`.run`).
"""

from vsr.compress.config import METHODS, STAGES, CompressConfig
from vsr.compress.layers import (
    PrunableLayer,
    candidate_widths,
    hparams_with_widths,
    layer_widths,
    prunable_layers,
)
from vsr.compress.masks import ChannelMasks, hard_mask, slim_network, soft_mask
from vsr.compress.prune import dr_prune, l1_prune
from vsr.compress.run import CompressResult, compress, model_stats
from vsr.compress.search import ChannelSearch, SearchResult, run_search

__all__ = [
    "METHODS", "STAGES", "ChannelMasks", "ChannelSearch", "CompressConfig", "CompressResult",
    "PrunableLayer", "SearchResult", "candidate_widths", "compress", "dr_prune",
    "hard_mask", "hparams_with_widths", "l1_prune", "layer_widths", "model_stats",
    "prunable_layers", "run_search", "slim_network", "soft_mask",
]
