"""The one exception type for bad user input, shared by every part of chinchax.

Raise `UserError` when the input (a config key, a file, a flag) is wrong; the message must name the
problem and the fix. The CLI prints it without a traceback. Bugs stay ordinary exceptions.
"""


class UserError(ValueError):
    """Bad input from the user, with a message that names the problem and the fix."""
