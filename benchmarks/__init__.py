"""Benchmarks: one entry point per question (``python -m benchmarks.<name>``).

Each prints a table and writes ``<out>/<name>.json``; ``python -m benchmarks.report``
copies the tables into ``benchmarks/README.md``. See that file for the commands.
"""

NAMES = ("fashion", "wholerun", "overhead", "throughput", "quality", "memory", "costs",
         "profile", "scaling")
