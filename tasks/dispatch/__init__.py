"""Dispatch: the task that receives each message and runs every listener that wants it."""
