"""The command-line experiments: thin absl entry points over the softcls_jax library.

From a checkout: ``python -m experiments.NAME``. Installed (``pip install``), the package is
``softcls_experiments`` and each experiment is a console command, e.g. ``softcls-sweep``.
"""
