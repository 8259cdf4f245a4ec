"""Amber buildkit package."""
