"""The built-in plugins of rdpo-zoo. Each module is an entry point of the ``rdpo-zoo`` distribution (the
``[project.entry-points.rdpo_zoo]`` table of pyproject.toml), loaded by the same code path as a third party's
plugin, and uses only the public API of ``rdpo_zoo``. No module here imports another, nor torch at import time."""
