"""Pure tensor functions: every dynamic equation of neurobit lives here exactly once."""
from neurobit.functional.lif import (LIFParameters, LIFState, alpha_from_tau, initial_state,
                                     lif_loop, lif_step, tau_from_alpha)
from neurobit.functional.lif_scan import lif_scan
from neurobit.functional.surrogate import spike
from neurobit.functional.ternary import Ternary, ternary_ste

__all__ = ["LIFParameters", "LIFState", "Ternary", "alpha_from_tau", "initial_state",
           "lif_loop", "lif_scan", "lif_step", "spike", "tau_from_alpha", "ternary_ste"]
