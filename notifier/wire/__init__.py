"""What the web side and the workers share, and nothing else: the message, the routing table,
and the broker checks both sides run.

The worker side (``tasks``) imports from ``notifier`` only this package and
:mod:`notifier.errors`, so that a worker never needs Pyramid.
"""
