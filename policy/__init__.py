"""policy: see README.md."""
