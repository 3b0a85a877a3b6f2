"""The ``reimagen`` command line. One module per sub-command, each with ``add_parser``."""
