"""bertpipe: from a Wikipedia dump to a pretrained BERT."""

__version__ = "0.1.0"


class BertpipeError(Exception):
    """An error the user can act on: the message names the file, the record and what to do.

    The CLI prints it without a traceback and exits with status 1.
    """
