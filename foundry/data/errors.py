"""The one exception type the data path raises for problems the user can fix.

Every message names what is wrong and how to fix it, so command-line entry points can print it
as a single line instead of a traceback. It subclasses ValueError so callers that already catch
ValueError for bad configuration keep working.
"""


class DataError(ValueError):
    """A user-fixable problem with data, a tokenizer, or a data-loader config."""
