"""Fakes and views shared by the unit tests, at our own edges."""

from pyramid.response import Response

from tests.unit.conftest import kinto_events


class RecordingDataManager:
    """A transaction participant that writes down in ``timeline`` when the transaction commits
    or aborts; it makes the commit fail when asked to."""

    def __init__(self, transaction_manager, timeline, fail_on_commit=False):
        self.transaction_manager = transaction_manager
        self.timeline = timeline
        self.fail_on_commit = fail_on_commit
        self.committed = False

    def sortKey(self):  # the name transaction calls
        return "recording"

    def tpc_begin(self, transaction):
        pass

    def commit(self, transaction):
        if self.fail_on_commit:
            raise RuntimeError("the database refused the commit")

    def tpc_vote(self, transaction):
        pass

    def tpc_finish(self, transaction):
        self.committed = True
        self.timeline.append(self.commit_note())

    def commit_note(self):
        return "committed"

    def tpc_abort(self, transaction):
        self.timeline.append("aborted")

    def abort(self, transaction):
        # transaction also calls abort after a commit, to clean up: that is no abort.
        if not self.committed:
            self.timeline.append("aborted")


def changes_view(request):
    """One change of each action: create, update, delete and read, on two resources."""
    request.notify_resource_changed("create", "article", "a1", new={"id": "a1"})
    request.notify_resource_changed("update", "comment", "c1", new={"id": "c1"}, old={"id": "c1"})
    request.notify_resource_changed("delete", "article", "a2", old={"id": "a2"})
    request.notify_resource_changed("read", "article", "a3", new={"id": "a3"})
    return Response("changed")


class FakeRequest:
    """A request as the subscriber and the forwarders see it: an environ, maybe a parent (a
    batch's subrequest)."""

    def __init__(self, parent=None):
        self.environ = {}
        self.parent = parent


class RecordingPublisher:
    """Stands in for CeleryPublisher: keeps what would have been sent, in order, and writes
    each publish into ``timeline`` as ``note`` says (a format of the message's ``action`` and
    ``resource_name``)."""

    def __init__(self, broker_url="memory://", timeout=1, timeline=None, *, note=None):
        self.broker_url = broker_url
        self.timeout = timeout
        self.timeline = [] if timeline is None else timeline
        self.note = "published {action}" if note is None else note
        self.published = []  # (message, queue)
        self.messages = []  # the messages alone
        self.outboxes = []  # whose submitted messages take() publishes first

    def publish(self, message, queue):
        self.timeline.append(
            self.note.format(action=message.action, resource_name=message.resource_name)
        )
        self.published.append((message, queue))
        self.messages.append(message)

    def take(self):
        """The messages published since the last call (with the outbox: once its thread's
        work, done here, published them)."""
        for outbox in self.outboxes:
            outbox.publish_pending()
        messages, self.messages = self.messages, []
        return messages

    def records(self, resource_name="record"):
        """The ids of the published records of ``resource_name``, message by message."""
        return [
            [change["new"]["id"] for change in message.impacted_records]
            for message in self.messages
            if message.resource_name == resource_name
        ]

    def close(self):
        pass


class BrokenPublisher(RecordingPublisher):
    """A publisher whose broker is down: it sees the message, then raises."""

    def publish(self, message, queue):
        self.published.append((message, queue))
        raise ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")


def raising_view(request):
    """A view that fails after declaring a change: nothing may be published."""
    request.notify_resource_changed("create", "article", "a1", new={"id": "a1"})
    raise RuntimeError("the view failed after notifying")


def kinto_event(event_class, step="create_record_1"):
    """The event of ``event_class`` (Kinto's or notifier's) that Kinto 26.5 emitted at ``step``."""
    (recorded,) = [e for e in kinto_events(event_class.__name__) if e["step"] == step]
    return event_class(recorded["payload"], recorded["impacted_objects"], FakeRequest())
