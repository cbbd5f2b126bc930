"""Data-source adapters: each turns a directory in a published format into raw
events (values as read, plus provenance) and an item catalogue."""
