"""Experiments: zoo specs -> cached trained models -> defence runs -> tables (see zoo.py)."""
