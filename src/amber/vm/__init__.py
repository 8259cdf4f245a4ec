"""Amber vm package."""
