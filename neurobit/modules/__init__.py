"""nn.Module shells over neurobit.functional; state goes in and comes out explicitly."""
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.lif_population import LIFPopulation
from neurobit.modules.microcircuit import MicroCircuit, MicroCircuitOutput, MicroCircuitState
from neurobit.modules.microcircuit_bank import MicroCircuitBank

__all__ = ["BitLinear", "LIFPopulation", "MicroCircuit", "MicroCircuitBank",
           "MicroCircuitOutput", "MicroCircuitState"]
from neurobit.modules.acc import ACC, ACCOutput, LearnedACC, acc_features  # noqa: E402
from neurobit.modules.cortical_hub import CorticalHub, HubOutput, HubState  # noqa: E402
from neurobit.modules.meta_controller import (Decision, MetaController,  # noqa: E402
                                              MetaControllerConfig, MetaState, decide,
                                              run_with_reflection)

__all__ += ["ACC", "ACCOutput", "LearnedACC", "acc_features", "CorticalHub", "HubOutput",
            "HubState", "Decision", "MetaController", "MetaControllerConfig", "MetaState",
            "decide", "run_with_reflection"]
