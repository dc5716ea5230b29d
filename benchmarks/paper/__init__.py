"""The RDPO paper's claims on the embedded world: ``python -m benchmarks.paper CLAIM --profile quick|full``.

See ``docs/reproduction.md`` for what each claim says, what was measured and whether it held; ``runs.py`` for
the cached training run (budget in UNet evaluations, the fixed reference pairs, the evaluation), ``claims.py``
for the claims, ``profiles.py`` for the two profiles.
"""
