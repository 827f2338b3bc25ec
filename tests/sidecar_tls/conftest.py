"""Fixtures shared by the sidecar tests."""

from __future__ import annotations

# CPython 3.11.7 can fail to compile hypothesis (imported lazily by its pytest plugin at the end
# of the session, deep in the stack: "AST constructor recursion depth mismatch"). Importing it
# here, at a shallow depth, avoids that.
import hypothesis  # noqa: F401
