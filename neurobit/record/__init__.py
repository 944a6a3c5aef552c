"""Recording: the streaming, crash-safe SONATA HDF5 writer and its reader.

``RunWriter`` writes one run (spikes, element reports, neurobit signals, metadata) to a
SONATA file; ``read_run`` opens it again, complete or left by a killed process.
The layout is documented in ``docs/output_format.md``.
"""
from neurobit.record.sonata_reader import Run, read_run
from neurobit.record.sonata_writer import OutputExistsError, RunWriter, WriterClosedError

__all__ = ["OutputExistsError", "Run", "RunWriter", "WriterClosedError", "read_run"]
