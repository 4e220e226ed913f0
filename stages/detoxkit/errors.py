"""The pipeline's exceptions: a leaf module, imported by every layer."""


class PipelineError(Exception):
    """An input problem the user can fix: printed as one clear message, without a traceback."""


class ParamsError(PipelineError):
    """A params.yaml value that is missing, unknown, ill-typed or out of range: the message names the key."""
