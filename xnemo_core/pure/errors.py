"""Domain errors. Messages say what failed, the value seen, what was expected and what to do."""


class XNeMoError(ValueError):
    """Base class: a user-fixable problem with inputs, files or settings."""


class CheckpointError(XNeMoError):
    """An X-NeMo checkpoint file is missing, unreadable, unsafe or does not match the expected architecture."""


class NoFaceError(XNeMoError):
    """No face was found where one is required."""


class IncompatibleModelError(XNeMoError):
    """A MODEL/XNEMO/conditioning combination that cannot work together."""
