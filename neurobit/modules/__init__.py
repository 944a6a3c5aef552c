"""nn.Module shells over neurobit.functional; state goes in and comes out explicitly."""
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.lif_population import LIFPopulation
from neurobit.modules.microcircuit import MicroCircuit, MicroCircuitOutput, MicroCircuitState
from neurobit.modules.microcircuit_bank import MicroCircuitBank

__all__ = ["BitLinear", "LIFPopulation", "MicroCircuit", "MicroCircuitBank",
           "MicroCircuitOutput", "MicroCircuitState"]
