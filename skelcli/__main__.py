"""`python -m skelcli ...` (also what `torchrun -m skelcli ...` runs)."""

from skelcli.cli import main

if __name__ == "__main__":
    main()
