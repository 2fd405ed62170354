"""What the web side and the workers share, and nothing else: the message
(:mod:`~notifier.wire.message`), Cliquet's payload vocabulary (:mod:`~notifier.wire.payload`),
the routing table (:mod:`~notifier.wire.routing`), Celery's task protocol written by hand
(:mod:`~notifier.wire.protocol`), and the broker checks both sides run
(:mod:`~notifier.wire.persistence`).

The worker side (``tasks``) imports from ``notifier`` only this package and
:mod:`notifier.errors`, so that a worker never needs Pyramid.
"""
