"""Feast definitions and the event/item schema everything else agrees on."""
