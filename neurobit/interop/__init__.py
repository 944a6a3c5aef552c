"""Interoperability with other simulators and formats.

- :mod:`neurobit.interop.brian2_reference`: builds a circuit's discrete LIF dynamics in Brian2
  (cross-validation of the spikes). Brian2 is imported only when that module is used, never at
  package import time.
- :mod:`neurobit.interop.nir_export`: ``export_nir`` (MicroCircuit / MicroCircuitBank ->
  ``nir.NIRGraph``; the subtractive delayed reset kept in metadata; see docs/nir.md).
- :mod:`neurobit.interop.nir_import`: ``import_nir`` (exact rebuild from neurobit metadata, or a
  forward-Euler ``NIRSimulator`` of any LIF/CubaLIF/LI/Linear/Affine graph, e.g. norse's
  trained Braille graph).
"""
