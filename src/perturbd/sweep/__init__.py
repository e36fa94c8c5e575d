"""Sweeps: a base experiment × a grid of config values × seeds, run resumably.

:mod:`.config` reads and expands a sweep file (no torch: a mistake in it is answered at once),
:mod:`.axes` turns an axis spec into values, :mod:`.executors` runs the configs (one process,
local workers or Ray), :mod:`.runner` ties them together (:func:`~.runner.run_sweep`). Nothing is
imported here, so that reading a sweep file stays cheap.
"""
