"""Lowering trained models to frozen, packed, fused inference artifacts (``neurobit compile``).

- :mod:`neurobit.compile.artifact`: the compiled file (safetensors, 2-bit packed ternary codes).
- :mod:`neurobit.compile.brain_lm`: CompiledBrainLM (per-token numba kernel for generation).
- :mod:`neurobit.compile.brain_kernels`: the kernel.
- :mod:`neurobit.compile.circuit`: compiled circuits (packed projection codes + resolved config)
  run by ``neurobit simulate MODEL`` with the fused stepper.
"""
