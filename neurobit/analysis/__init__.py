"""Spike-train analysis: statistics, correlations, distances (numpy only at import).

Spike trains are a list of sorted 1-D float64 arrays of spike times in ms, one per neuron,
with an explicit window ``[t_start_ms, t_stop_ms]``; :func:`trains_from_sonata` builds them
from the flat ``(timestamps_ms, node_ids)`` arrays stored in the HDF5 files. Each statistic is
tested against Elephant. Plots live in :mod:`neurobit.analysis.plots` (imports matplotlib) and
are not imported here.
"""
from neurobit.analysis.correlation import correlation_matrix, sttc, sttc_matrix
from neurobit.analysis.distance import van_rossum_distance, van_rossum_matrix
from neurobit.analysis.spike_stats import (
    as_trains,
    bin_spikes,
    cv2_isi,
    cv_isi,
    fano_factor,
    firing_rates,
    isi,
    lifetime_sparsity,
    mean_rate,
    population_activity,
    population_sparsity,
    psth,
    spike_counts,
    trains_from_sonata,
    trains_to_sonata,
    treves_rolls,
)

__all__ = [
    "as_trains",
    "bin_spikes",
    "correlation_matrix",
    "cv2_isi",
    "cv_isi",
    "fano_factor",
    "firing_rates",
    "isi",
    "lifetime_sparsity",
    "mean_rate",
    "population_activity",
    "population_sparsity",
    "psth",
    "spike_counts",
    "sttc",
    "sttc_matrix",
    "trains_from_sonata",
    "trains_to_sonata",
    "treves_rolls",
    "van_rossum_distance",
    "van_rossum_matrix",
]
