"""The programs supervisord runs, one module or package each (python -m
energy_worker.programs.<name>). A program imports no other program."""
