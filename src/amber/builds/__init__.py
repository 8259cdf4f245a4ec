"""Amber builds package."""
