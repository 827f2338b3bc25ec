"""Suite-wide setup."""

# Imported early: a late import by the pytest plugin crashed Python 3.11.7 at session end.
import hypothesis  # noqa: F401
