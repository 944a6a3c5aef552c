"""neurobit: LIF circuits with ternary synapses, simulated, recorded, trained and compiled.

Layers (lower never imports higher): functional -> modules -> models -> config -> sim ->
record -> interop -> compile -> decode -> train -> analysis -> cli. See README.md.
"""
from neurobit._version import __version__

__all__ = ["__version__"]
