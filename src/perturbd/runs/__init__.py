"""A run and its folder: :mod:`.experiment` (the only module that knows the whole order),
:mod:`.folder` (:class:`~.folder.RunDir`: the only code that knows a run folder's files, its format
and typed readers), :mod:`.rundir` (folders written whole or not at all, failure records, code
identity), :mod:`.results` (the metrics as one type, and the metric table), :mod:`.twins` (the
clean-twin cache), :mod:`.saved` (loading a finished run), :mod:`.export` and :mod:`.reproduce`.
Nothing is imported here: the folder helpers are used by layers below the experiment."""
