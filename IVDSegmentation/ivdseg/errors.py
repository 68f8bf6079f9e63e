class IvdsegError(Exception):
    """An error the user can cause and fix: the message is one sentence naming the file and the problem."""


class IvdsegWarning(UserWarning):
    """Something was skipped but the work goes on (e.g. a damaged DICOM file outside the chosen series).

    The message is one sentence; the command line prints it as one line on stderr.
    """
