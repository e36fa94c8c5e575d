"""A run and its folder: :mod:`.experiment` (the only module that knows the whole order),
:mod:`.rundir` (the folder, written whole or not at all), :mod:`.results` (``metrics.json`` as one
type), :mod:`.twins` (the clean-twin cache), :mod:`.saved` (loading a finished run),
:mod:`.export` and :mod:`.reproduce`. Nothing is imported here: the folder helpers are used by
layers below the experiment."""
