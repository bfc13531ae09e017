"""The daemon object and its services (see daemon.py)."""
