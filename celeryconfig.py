"""The configuration module that ``celery -A tasks worker`` reads in this repository.

notifier's defaults (``tasks/defaults.py``, read from the environment: ``CELERY_BROKER_URL``,
``NOTIFIER_ROUTES``, ``NOTIFIER_LISTENERS``...) apply to whatever a configuration module leaves
out, so a deployment's own module sets only what it changes, as Celery settings, e.g.::

    worker_concurrency = 4
    notifier_visibility_timeout = 60

This one changes nothing. ``$CELERY_CONFIG_MODULE`` names another module.
"""
