"""The ``pyprobes`` command line."""
