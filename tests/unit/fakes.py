"""Fakes shared by the unit tests, at our own edges."""


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
