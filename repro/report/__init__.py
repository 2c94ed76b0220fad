"""The report: turns result JSONs and the plan into the book's pages, tables and figures.

Imports the study and the library; never the pipeline.
"""
