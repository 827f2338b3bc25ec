"""ca: see README.md."""
