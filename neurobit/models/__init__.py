"""Whole networks built from neurobit.modules (see ARCHITECTURE.md)."""
