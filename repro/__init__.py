"""repro: a reproducibility study of DeepSec's attack and defence utility metrics.

Modules: :mod:`repro.data` (datasets, provenance, candidates), :mod:`repro.models` (architectures, DeepSec's
checkpoints), :mod:`repro.attacks`, :mod:`repro.metrics`, :mod:`repro.train`, :mod:`repro.results`,
:mod:`repro.profiles`, :mod:`repro.run` (the pipeline that executes the notebooks and builds the book).
Nothing here parses a command line except ``repro.run``/``repro.train`` entry points, and nothing touches CUDA at import.
"""
__version__ = "0.1.0"
