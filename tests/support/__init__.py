"""What the unit and integration tests share that is not a fixture: the processes they start."""
