class IvdsegError(Exception):
    """An error the user can cause and fix: the message is one sentence naming the file and the problem."""
