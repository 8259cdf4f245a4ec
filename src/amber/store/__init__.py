"""Amber store package."""
