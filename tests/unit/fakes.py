"""Fakes and views shared by the unit tests, at our own edges."""

from pyramid.response import Response


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
