"""python -m budgetsft."""

from budgetsft.cli import main

main()
