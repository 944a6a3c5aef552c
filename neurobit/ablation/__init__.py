"""``neurobit ablate``: a grid of variants x seeds over a base experiment, resumable, with a
results table (mean +/- std) and plots. See :mod:`neurobit.ablation.grid`."""
