"""``python -m pyprobes``."""

from pyprobes.cli.main import main_entry

main_entry()
