"""Pure tensor functions: every dynamic equation of neurobit lives here exactly once."""
from neurobit.functional.lif import (LIFParameters, LIFState, alpha_from_tau, initial_state,
                                     lif_loop, lif_step, tau_from_alpha)
from neurobit.functional.lif_scan import lif_scan
from neurobit.functional.surrogate import spike
from neurobit.functional.ternary import Ternary, ternary_ste

__all__ = ["LIFParameters", "LIFState", "Ternary", "alpha_from_tau", "initial_state",
           "lif_loop", "lif_scan", "lif_step", "spike", "tau_from_alpha", "ternary_ste"]
from neurobit.functional.attention import (GroupLayout, group_layout, grouped_attention,  # noqa: E402
                                           masked_attention)
from neurobit.functional.fast_weights import (fast_weight_init, fast_weight_read,  # noqa: E402
                                              fast_weight_update)
from neurobit.functional.inhibition import divisive_normalization, inhibit_groups, kwta  # noqa: E402
from neurobit.functional.monitoring import (ZScoreState, calibrate, circuit_conflict,  # noqa: E402
                                            js_divergence, normalized_entropy,
                                            pairwise_cosine_dissimilarity, variance_conflict,
                                            zscore_init, zscore_normalize, zscore_update)

__all__ += ["GroupLayout", "group_layout", "grouped_attention", "masked_attention",
            "fast_weight_init", "fast_weight_read", "fast_weight_update",
            "divisive_normalization", "inhibit_groups", "kwta", "ZScoreState", "calibrate",
            "circuit_conflict", "js_divergence", "normalized_entropy",
            "pairwise_cosine_dissimilarity", "variance_conflict", "zscore_init",
            "zscore_normalize", "zscore_update"]
