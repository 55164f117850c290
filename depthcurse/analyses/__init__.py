"""Analyses of how a model uses its depth; each returns a tidy pandas DataFrame.

Part 1 covers the residual stream. `collect_stream` runs the model once and
feeds `residual_norms`, `contributions`, `cosines`, `logit_lens`,
`tuned_lens` and the activation half of `layer_similarity`.
`copy_divergence` and `residual_norms_over_run` read a run's checkpoints.
"""

from depthcurse.analyses.common import compare_halves
from depthcurse.analyses.contributions import contribution_summary, contributions
from depthcurse.analyses.copy_divergence import copy_divergence
from depthcurse.analyses.cosines import cosines
from depthcurse.analyses.layer_similarity import layer_similarity, weight_similarity
from depthcurse.analyses.logit_lens import LensHead, logit_lens
from depthcurse.analyses.residual_norms import residual_norms, residual_norms_over_run
from depthcurse.analyses.stream import StreamStats, collect_stream
from depthcurse.analyses.tuned_lens import TunedLens, train_tuned_lens, tuned_lens

__all__ = [
    "LensHead",
    "StreamStats",
    "TunedLens",
    "collect_stream",
    "compare_halves",
    "contribution_summary",
    "contributions",
    "copy_divergence",
    "cosines",
    "layer_similarity",
    "logit_lens",
    "residual_norms",
    "residual_norms_over_run",
    "train_tuned_lens",
    "tuned_lens",
    "weight_similarity",
]
