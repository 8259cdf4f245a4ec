"""Amber guest package."""
