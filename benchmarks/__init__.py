"""saltbus's benchmark against Salt 3007's own event publisher: ``python -m benchmarks``.

See ``benchmarks/NOTES.md`` for what is measured and how, and the README's
"Performance" section for the results.
"""
