"""Interoperability with other simulators and formats.

- :mod:`neurobit.interop.brian2_reference`: builds a circuit's discrete LIF dynamics in Brian2
  (cross-validation of the spikes). Brian2 is imported only when that module is used, never at
  package import time.
"""
