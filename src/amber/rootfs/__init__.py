"""Amber rootfs package."""
