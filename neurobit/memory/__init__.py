"""Memory tiers and continual learning.

- :mod:`~neurobit.memory.episodic`: crash-safe episodic buffer (SQLite) and high-value selection.
- :mod:`~neurobit.memory.lora`: low-rank float adapters on BitLinear; merge with re-quantization.
- :mod:`~neurobit.memory.consolidation`: replay of selected episodes + old data into adapters,
  bounded learning rate and frequency, prediction-integrity-scaled plasticity.
- :mod:`~neurobit.memory.lifecycle`: model identity, JSONL lifecycle log, replay of the log.
- :mod:`~neurobit.memory.incremental`: content-addressed incremental checkpoints.

See docs/memory.md.
"""
from neurobit.memory.episodic import Episode, EpisodicBuffer, value_scores
from neurobit.memory.incremental import IncrementalStore, SaveInfo, tensor_sha256
from neurobit.memory.lora import (LoRABitLinear, MergeReport, adapters, attach_from_state_dict,
                                  attach_lora, detach_lora, lora_parameter_names, merge_lora)
from neurobit.memory.lifecycle import (UPDATES, DataStore, Lifecycle, LifecycleLog,
                                       history_lines, read_log, register_update, replay,
                                       tensors_sha256)
from neurobit.memory.consolidation import (ConsolidationConfig, ConsolidationResult,
                                           PredictionIntegrity, consolidate, consolidation_data,
                                           consolidation_due, episodes_to_batch,
                                           integrity_score, lm_loss)

__all__ = ["Episode", "EpisodicBuffer", "value_scores", "IncrementalStore", "SaveInfo",
           "tensor_sha256", "LoRABitLinear", "MergeReport", "adapters", "attach_from_state_dict",
           "attach_lora", "detach_lora", "lora_parameter_names", "merge_lora", "UPDATES",
           "DataStore", "Lifecycle", "LifecycleLog", "history_lines", "read_log",
           "register_update", "replay", "tensors_sha256", "ConsolidationConfig",
           "ConsolidationResult", "PredictionIntegrity", "consolidate", "consolidation_data",
           "consolidation_due", "episodes_to_batch", "integrity_score", "lm_loss"]
