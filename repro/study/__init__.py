"""The study: what it runs, as data (profiles, plan, published numbers), and the steps its notebooks call.

Imports the library (data, models, attacks, metrics, train); never the report or the pipeline.
"""
