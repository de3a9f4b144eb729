"""Time to DO: a self-hostable task-and-time backend and the ops toolkit that runs it."""

__version__ = "0.1.0"
