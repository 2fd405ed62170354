"""Dispatch: the task that receives each message and runs every listener that wants it.

One event, in order: :mod:`~tasks.dispatch.task` (the ``notifier.dispatch`` Celery task) runs a
:mod:`~tasks.dispatch.run` over its message and those it takes after it; each message goes to
its listeners by :mod:`~tasks.dispatch.inline` (the first attempts dispatch runs itself, for
the listeners :mod:`~tasks.dispatch.pace` finds fast enough), :mod:`~tasks.dispatch.fan_out`
(a task each, for the others), :mod:`~tasks.dispatch.batches` (batch listeners) and
:mod:`~tasks.dispatch.coverage` (the listeners of other workers). Around each listener's run,
:mod:`~tasks.dispatch.bound` bounds its deliveries; :mod:`~tasks.dispatch.failures` dead-letters
what fails for good, on the signals of :mod:`~tasks.dispatch.signals`. What a run works with is
built once at worker start, by :mod:`tasks.wiring`.
"""
