"""Amber api package."""
