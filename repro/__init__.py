"""repro: a reproducibility study of DeepSec's attack and defence utility metrics.

Three layers, each importing only from the ones above it:

* the library: :mod:`repro.data`, :mod:`repro.results`, :mod:`repro.models`, :mod:`repro.attacks`,
  :mod:`repro.metrics`, :mod:`repro.train` (tensors in [0, 1] in, logits, metrics and trained models out);
* the study, :mod:`repro.study` (profiles, the plan of columns, published numbers, the steps the notebooks call,
  findings) and the report, :mod:`repro.report` (pages, tables and figures of the book);
* the pipeline, :mod:`repro.pipeline`, which executes the plan with papermill and builds the book.

Nothing here parses a command line except the ``repro.pipeline`` and ``repro.train`` entry points, and nothing
touches CUDA at import.
"""
__version__ = "0.1.0"
